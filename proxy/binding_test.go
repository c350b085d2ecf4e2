package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/resolve"
	"github.com/gwlbproxy/gwlbproxy/proxy/resolve/dnstest"
)

// testBinder is the harness's DNS: every name resolves to the test
// destination 203.0.113.10 and to 203.0.113.99 (which tests use as an
// unroutable destination), except elsewhere.test (198.51.100.7) and
// dnsdown.test (resolver failure).
type testBinder struct{}

var elsewhere = netip.MustParseAddr("198.51.100.7")

func (testBinder) Bound(_ context.Context, name string, addr netip.Addr) (resolve.Binding, error) {
	answers := []netip.Addr{testDstTLS.Addr(), netip.MustParseAddr("203.0.113.99")}
	switch name {
	case "elsewhere.test", "splice-elsewhere.test":
		answers = []netip.Addr{elsewhere}
	case "dnsdown.test":
		return resolve.Binding{}, errors.New("resolve dnsdown.test: timeout")
	}
	if lit, err := netip.ParseAddr(name); err == nil {
		answers = []netip.Addr{lit}
	}
	for _, a := range answers {
		if a == addr {
			return resolve.Binding{Match: true}, nil
		}
	}
	return resolve.Binding{Answers: answers}, nil
}

func bindPolicy() policy.Config {
	pc := testPolicy()
	pc.Rules = append([]policy.Rule{
		{Name: "splice-elsewhere", Action: policy.Splice, Domains: []string{"splice-elsewhere.test"}},
		{Name: "optout", Action: policy.Allow, Domains: []string{"optout.test"}, Bind: policy.BindNone},
	}, pc.Rules...)
	return pc
}

func TestBindingHTTP(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy = bindPolicy() })
	c := h.httpClient(false)
	get := func(host string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", "http://"+h.httpAddr+"/x", nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp, readAll(t, resp)
	}
	if resp, _ := get("app.test"); resp.StatusCode != 200 {
		t.Fatalf("bound host: %d", resp.StatusCode)
	}
	h.rec.wait(t, "match record", and(field("host", "app.test"), field("bind", "match"), field("bind_name", "app.test"), field("action", "allow")))

	before := h.dials.Load()
	resp, body := get("elsewhere.test")
	if resp.StatusCode != 403 || !strings.Contains(body, RuleBindMismatch) || !strings.Contains(body, "198.51.100.7") {
		t.Fatalf("mismatch: %d %q", resp.StatusCode, body)
	}
	rec := h.rec.wait(t, "mismatch record", and(field("host", "elsewhere.test"), field("rule", RuleBindMismatch)))
	if rec["action"] != "deny" || rec["bind"] != "mismatch" || rec["bind_answers"] != "198.51.100.7" || rec["dst_ip"] != "203.0.113.10" || rec["bind_name"] != "elsewhere.test" {
		t.Fatalf("record: %v", rec)
	}
	resp, _ = get("dnsdown.test")
	if resp.StatusCode != 403 {
		t.Fatalf("resolver failure: %d", resp.StatusCode)
	}
	h.rec.wait(t, "failure record", and(field("host", "dnsdown.test"), field("rule", RuleBindResolveFailed), field("bind", "resolve-failed"), field("action", "deny")))
	if h.dials.Load() != before {
		t.Fatal("a denied binding dialed upstream")
	}
	// Opt-out rule: no check, recorded as such.
	if resp, _ := get("optout.test:80"); resp.StatusCode != 200 {
		t.Fatalf("opt-out: %d", resp.StatusCode)
	}
	h.rec.wait(t, "opt-out record", and(field("rule", "optout"), field("bind", "none")))
	// IP literal Host equal to the destination.
	if resp, _ := get("203.0.113.10"); resp.StatusCode != 200 {
		t.Fatalf("literal: %d", resp.StatusCode)
	}
}

// A keep-alive connection that switches Host to a name living elsewhere is
// denied for that request; the connection's earlier name still passes.
func TestBindingKeepAliveHostSwitch(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy = bindPolicy() })
	conn, err := net.Dial("tcp", h.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /a HTTP/1.1\r\nHost: app.test\r\n\r\nGET /b HTTP/1.1\r\nHost: elsewhere.test\r\n\r\nGET /c HTTP/1.1\r\nHost: app.test\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	for i, want := range []int{200, 403, 200} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("response %d: %d, want %d", i, resp.StatusCode, want)
		}
	}
}

func TestBindingTLS(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy = bindPolicy() })
	// Bumped, bound: 200 and every record says match.
	resp, _ := mustGet(t, h.httpsClient(false), "https://app.test/x")
	if resp.StatusCode != 200 {
		t.Fatalf("bump: %d", resp.StatusCode)
	}
	h.rec.wait(t, "bump record", and(field("sni", "app.test"), field("bind", "match"), field("method", "GET")))

	// Bumped, SNI living elsewhere: 403 page, no upstream dial.
	before := h.dials.Load()
	resp, body := mustGet(t, h.httpsClient(false), "https://elsewhere.test/x")
	if resp.StatusCode != 403 || !strings.Contains(body, RuleBindMismatch) {
		t.Fatalf("bump mismatch: %d %q", resp.StatusCode, body)
	}
	h.rec.wait(t, "bump mismatch", and(field("sni", "elsewhere.test"), field("rule", RuleBindMismatch), field("bind_answers", "198.51.100.7"), field("action", "deny")))

	// Spliced SNI living elsewhere: never spliced, never dialed; the client
	// gets the appliance's page (not the server's certificate).
	tc, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "splice-elsewhere.test", RootCAs: h.clientCA})
	if err != nil {
		t.Fatalf("splice mismatch handshake: %v", err)
	}
	if got := tc.ConnectionState().PeerCertificates[0].Issuer.CommonName; !strings.Contains(got, "gwlbproxy test appliance CA") {
		t.Fatalf("splice mismatch served by %q", got)
	}
	tc.Close()
	h.rec.wait(t, "splice mismatch", and(field("sni", "splice-elsewhere.test"), field("rule", RuleBindMismatch), field("action", "deny")))
	if h.dials.Load() != before {
		t.Fatalf("binding denials dialed upstream %d times", h.dials.Load()-before)
	}
	// Spliced and bound: passes untouched (the upstream's certificate).
	tc, err = tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "splice.test", RootCAs: h.upCA.pool()})
	if err != nil {
		t.Fatalf("splice: %v", err)
	}
	tc.Close()
	h.rec.wait(t, "splice record", and(field("sni", "splice.test"), field("action", "splice"), field("bind", "match")))
}

func TestBindingReportOnly(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy = bindPolicy(); c.Binding.Mode = BindReportOnly })
	req, _ := http.NewRequest("GET", "http://"+h.httpAddr+"/x", nil)
	req.Host = "elsewhere.test"
	resp, err := h.httpClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("report only: %d", resp.StatusCode)
	}
	h.rec.wait(t, "would deny", and(field("rule", "report_only:"+RuleBindMismatch), field("action", "allow"), field("bind", "mismatch")))
}

func TestBindingOff(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy = bindPolicy(); c.Binding.Mode = BindOff })
	req, _ := http.NewRequest("GET", "http://"+h.httpAddr+"/x", nil)
	req.Host = "elsewhere.test"
	resp, err := h.httpClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("off: %d", resp.StatusCode)
	}
	h.rec.wait(t, "off record", and(field("host", "elsewhere.test"), field("bind", "off")))
}

// With the real resolver against a DNS server: binding follows the
// answers, a silent resolver denies fast.
func TestBindingRealResolver(t *testing.T) {
	srv, err := dnstest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	srv.Set("app.test", 60, testDstTLS.Addr())
	srv.Set("elsewhere.test", 60, elsewhere)
	srv.Set("slow.test", 60, testDstTLS.Addr())
	h := newHarnessOpts(t, harnessOpts{
		cfg: func(c *Config) {
			c.Policy = bindPolicy()
			c.Binding.Resolver.Servers = []string{srv.Addr}
			c.Binding.Resolver.Timeout = 300 * time.Millisecond
		},
		deps: func(_ *harness, d *Deps) { d.Binder = nil },
	})
	c := h.httpClient(false)
	get := func(host string) int {
		req, _ := http.NewRequest("GET", "http://"+h.httpAddr+"/x", nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		return resp.StatusCode
	}
	if s := get("app.test"); s != 200 {
		t.Fatalf("app: %d", s)
	}
	if s := get("elsewhere.test"); s != 403 {
		t.Fatalf("elsewhere: %d", s)
	}
	if s := get("unknown.test"); s != 403 {
		t.Fatalf("nxdomain: %d", s)
	}
	h.rec.wait(t, "nx record", and(field("host", "unknown.test"), field("rule", RuleBindMismatch)))
	srv.Silent(true)
	start := time.Now()
	if s := get("slow.test"); s != 403 {
		t.Fatalf("silent resolver: %d", s)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("silent resolver took %v", d)
	}
	h.rec.wait(t, "failure", and(field("host", "slow.test"), field("rule", RuleBindResolveFailed)))
	// app.test is cached: unaffected by the dead resolver.
	if s := get("app.test"); s != 200 {
		t.Fatalf("cached name while resolver down: %d", s)
	}
}

// The absolute-form authority is the name decided on (and bound), not a
// Host header beside it.
func TestBindingAbsoluteForm(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy = bindPolicy() })
	conn, err := net.Dial("tcp", h.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET http://elsewhere.test/x HTTP/1.1\r\nHost: app.test\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("absolute-form to an address the authority does not have: %d", resp.StatusCode)
	}
	h.rec.wait(t, "absolute-form record", and(field("bind_name", "elsewhere.test"), field("rule", RuleBindMismatch)))
}

// policy.report_only covers binding too; bind: none is warned about at
// start.
func TestBindingPolicyReportOnlyAndWarning(t *testing.T) {
	var logBuf syncBuffer
	h := newHarnessOpts(t, harnessOpts{
		cfg:    func(c *Config) { c.Policy = bindPolicy(); c.Policy.ReportOnly = true },
		logger: slog.New(slog.NewTextHandler(&logBuf, nil)),
	})
	if !strings.Contains(logBuf.String(), "destination binding off for rule") || !strings.Contains(logBuf.String(), "rule=optout") {
		t.Fatalf("no start warning for bind: none:\n%s", logBuf.String())
	}
	req, _ := http.NewRequest("GET", "http://"+h.httpAddr+"/x", nil)
	req.Host = "dnsdown.test"
	resp, err := h.httpClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("report only, resolver failure: %d", resp.StatusCode)
	}
	h.rec.wait(t, "would deny", and(field("rule", "report_only:"+RuleBindResolveFailed), field("action", "allow"), field("bind", "resolve-failed")))
}

// Over HTTP/2 the :authority is the name; with an SNI it must equal it,
// so the connection's binding holds for every stream.
func TestBindingHTTP2(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy = bindPolicy() })
	c := h.h2Client()
	for i := 0; i < 3; i++ {
		resp, _ := mustGet(t, c, "https://app.test/x")
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("h2: %d %s", resp.StatusCode, resp.Proto)
		}
	}
	h.rec.wait(t, "h2 record", and(field("sni", "app.test"), field("alpn", "h2"), field("bind", "match"), field("method", "GET")))
}

// The binding check's own cost, with the real resolver on its cache-hit
// path: per new connection (a Bound lookup) and per keep-alive request
// (the connection's memo). bench proxy measures the whole path; this
// isolates the added work from a shared machine's noise.
func BenchmarkBindingCheck(b *testing.B) {
	srv, err := dnstest.Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	srv.Set("bench.test", 3600, testDstTLS.Addr())
	cfg := DefaultConfig()
	cfg.Binding.Resolver.Servers = []string{srv.Addr}
	p, err := New(cfg, Deps{Recorder: &memRecorder{}}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Shutdown(context.Background()) })
	d := policy.Decision{Action: policy.Allow, Rule: "r"}
	warm := &connState{dst: testDstTLS}
	if r := p.checkBinding(p.ps(), warm, "bench.test", d); r.status != bindMatch {
		b.Fatalf("warm-up: %+v", r)
	}
	b.Run("new-conn", func(b *testing.B) {
		b.ReportAllocs()
		var rec Record
		st := &connState{dst: testDstTLS}
		for i := 0; i < b.N; i++ {
			st.bind.Store(nil) // a new connection: no memo
			r := p.checkBinding(p.ps(), st, "bench.test", d)
			r.apply(&rec)
		}
	})
	b.Run("keep-alive", func(b *testing.B) {
		b.ReportAllocs()
		var rec Record
		for i := 0; i < b.N; i++ {
			r := p.checkBinding(p.ps(), warm, "bench.test", d)
			r.apply(&rec)
		}
	})
	b.Run("record-fields", func(b *testing.B) {
		// What the three record fields add to encoding one record.
		r := Record{Bind: "match", BindName: "bench.test"}
		buf := make([]byte, 0, 1024)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			buf = appendStr(buf[:0], "bind", r.Bind, 2048)
			buf = appendStr(buf, "bind_name", r.BindName, 2048)
			buf = appendStr(buf, "bind_answers", r.BindAnswers, 2048)
		}
	})
}
