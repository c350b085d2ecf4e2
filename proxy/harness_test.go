package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/gwlbproxy/gwlbproxy/ca"
	"github.com/gwlbproxy/gwlbproxy/proxy/internal/h1/h1test"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/schema"
)

// The tests run on loopback without TPROXY. The proxy listens on 127.0.0.1;
// Deps.OriginalDst maps each accepted connection to a realistic original
// destination in TEST-NET-3 (203.0.113.10:443 for the TLS listener, :80 for
// the HTTP listener, or an override such as 169.254.169.254), and
// Deps.DialUpstream routes those destinations back to loopback test upstreams. So the SSRF
// guard and the pool keys see what they would see in production, and the
// tests can prove which address the proxy dialed.

var (
	testDstTLS  = netip.MustParseAddrPort("203.0.113.10:443")
	testDstHTTP = netip.MustParseAddrPort("203.0.113.10:80")
)

const upstreamMarker = "UPSTREAM-CONTENT-7f3a"

// testCA is a throwaway CA for upstream servers.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	mu   sync.Mutex
	leaf map[string]*tls.Certificate
}

func newTestCA(t testing.TB, cn string) *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), leaf: map[string]*tls.Certificate{}}
}

// issue makes a leaf for names (DNS or IP) valid in [nb, na], signed by ca,
// or self-signed when selfSigned.
func (ca *testCA) issue(t testing.TB, names []string, nb, na time.Time, selfSigned bool) *tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: nb, NotAfter: na, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip, err := netip.ParseAddr(n); err == nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	parent, signer := ca.cert, ca.key
	if selfSigned {
		parent, signer = tmpl, key
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// upstreamCert picks the upstream's certificate by SNI: special names
// produce broken certificates, every other name a valid one.
func (ca *testCA) upstreamCert(t testing.TB) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		name := h.ServerName
		if name == "" {
			name = testDstTLS.Addr().String()
		}
		ca.mu.Lock()
		defer ca.mu.Unlock()
		if c, ok := ca.leaf[name]; ok {
			return c, nil
		}
		now := time.Now()
		var c *tls.Certificate
		switch name {
		case "expired.test":
			c = ca.issue(t, []string{name}, now.Add(-48*time.Hour), now.Add(-24*time.Hour), false)
		case "wrongname.test":
			c = ca.issue(t, []string{"other.example"}, now.Add(-time.Hour), now.Add(time.Hour), false)
		case "selfsigned.test":
			c = ca.issue(t, []string{name}, now.Add(-time.Hour), now.Add(time.Hour), true)
		default:
			c = ca.issue(t, []string{name}, now.Add(-time.Hour), now.Add(time.Hour), false)
		}
		ca.leaf[name] = c
		return c, nil
	}
}

// memRecorder keeps records for assertions.
type memRecorder struct {
	mu   sync.Mutex
	recs []map[string]any
	raw  [][]byte
}

func (m *memRecorder) ShipRequest(_ time.Time, b []byte, met schema.Metrics) error {
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("record is not JSON: %v: %s", err, b)
	}
	// The typed metric fields must say what the JSON says (one schema).
	if d, _ := v[schema.KeyDurationMS].(float64); v[schema.KeyAction] != met.Action ||
		v[schema.KeyStatus] != float64(met.Status) || math.Abs(d-met.DurationMS) > 0.0005 {
		return fmt.Errorf("record metrics %+v disagree with the JSON: %s", met, b)
	}
	m.mu.Lock()
	m.recs = append(m.recs, v)
	m.raw = append(m.raw, append([]byte(nil), b...))
	m.mu.Unlock()
	return nil
}

// wait polls until a record satisfies match.
func (m *memRecorder) wait(t testing.TB, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		m.mu.Lock()
		for _, r := range m.recs {
			if match(r) {
				m.mu.Unlock()
				return r
			}
		}
		m.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t.Fatalf("no record for %s; have %d records: %v", what, len(m.recs), m.recs)
	return nil
}

func field(k, v string) func(map[string]any) bool {
	return func(r map[string]any) bool { s, _ := r[k].(string); return s == v }
}

func and(fs ...func(map[string]any) bool) func(map[string]any) bool {
	return func(r map[string]any) bool {
		for _, f := range fs {
			if !f(r) {
				return false
			}
		}
		return true
	}
}

type harness struct {
	t        testing.TB
	p        *Proxy
	rec      *memRecorder
	tlsAddr  string
	httpAddr string
	clientCA *x509.CertPool // trusts the appliance CA
	appCA    *x509.Certificate
	upCA     *testCA
	upTLS    *httptest.Server
	upHTTP   *httptest.Server
	dials    atomic.Int64
	dialedTo sync.Map // dst string -> count
	override atomic.Pointer[netip.AddrPort]
	tlsL     net.Listener
	sseAck   chan struct{}
	httpL    net.Listener
}

// testPolicy: deny blocked.test, splice splice.test, allow *.test and the
// TEST-NET IP as a Host, default deny.
func testPolicy() policy.Config {
	pc := policy.DefaultConfig()
	pc.Rules = []policy.Rule{
		{Name: "deny-blocked", Action: policy.Deny, Domains: []string{"blocked.test"}},
		{Name: "splice-bank", Action: policy.Splice, Domains: []string{"splice.test"}},
		{Name: "allow-test", Action: policy.Allow, Domains: []string{"*.test", "203.0.113.10"}},
	}
	return pc
}

func newHarness(t testing.TB, mod func(*Config)) *harness {
	t.Helper()
	return newHarnessOpts(t, harnessOpts{cfg: mod})
}

// harnessOpts adjust a harness: cfg the config, deps the Deps (after the
// test defaults are set), logger replaces the discarding logger.
type harnessOpts struct {
	cfg    func(*Config)
	deps   func(*harness, *Deps)
	logger *slog.Logger
}

// route maps a TEST-NET original destination to its loopback upstream.
func (h *harness) route(dst netip.AddrPort) (string, error) {
	switch dst {
	case testDstTLS:
		return h.upTLS.Listener.Addr().String(), nil
	case testDstHTTP:
		return h.upHTTP.Listener.Addr().String(), nil
	}
	return "", fmt.Errorf("test dialer: no route to %s", dst)
}

func newHarnessOpts(t testing.TB, o harnessOpts) *harness {
	t.Helper()
	mod := o.cfg
	h := &harness{t: t, rec: &memRecorder{}}
	dir := t.TempDir()
	if err := ca.Init(dir, ca.InitOptions{CommonName: "gwlbproxy test appliance CA"}); err != nil {
		t.Fatal(err)
	}
	auth, err := ca.LoadFiles(filepath.Join(dir, ca.CertFileName), filepath.Join(dir, ca.KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	h.appCA = auth.Certificate()
	h.clientCA = x509.NewCertPool()
	h.clientCA.AddCert(h.appCA)
	minter := ca.NewMinter(auth, ca.MinterOptions{}, nil)

	h.upCA = newTestCA(t, "upstream test CA")
	bundle := filepath.Join(dir, "upstream-ca.pem")
	os.WriteFile(bundle, h.upCA.pem, 0o644)

	h.sseAck = make(chan struct{}, 1)
	mux := upstreamMux(h.sseAck)
	h.upTLS = httptest.NewUnstartedServer(mux)
	ipCert := h.upCA.issue(t, []string{testDstTLS.Addr().String()}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), false)
	// Certificates serves hellos without SNI; GetCertificate the others.
	h.upTLS.TLS = &tls.Config{GetCertificate: h.upCA.upstreamCert(t), Certificates: []tls.Certificate{*ipCert}}
	h.upTLS.Config.ErrorLog = log.New(io.Discard, "", 0)
	h.upTLS.EnableHTTP2 = true // offers h2 and http/1.1, like most origins
	h.upTLS.StartTLS()
	t.Cleanup(h.upTLS.Close)
	h.upHTTP = httptest.NewServer(mux)
	t.Cleanup(h.upHTTP.Close)

	cfg := DefaultConfig()
	cfg.Policy = testPolicy()
	cfg.UpstreamCABundle = bundle
	cfg.RedactQuery = true
	if mod != nil {
		mod(&cfg)
	}
	h.tlsL, _ = net.Listen("tcp", "127.0.0.1:0")
	h.httpL, _ = net.Listen("tcp", "127.0.0.1:0")
	tlsPort := h.tlsL.Addr().(*net.TCPAddr).Port
	deps := Deps{
		Certs: minter, Recorder: h.rec, InstanceID: "i-test",
		OriginalDst: func(c net.Conn) (netip.AddrPort, error) {
			if o := h.override.Load(); o != nil {
				return *o, nil
			}
			if c.LocalAddr().(*net.TCPAddr).Port == tlsPort {
				return testDstTLS, nil
			}
			return testDstHTTP, nil
		},
		EndpointOf: func(net.Conn) (uint64, bool) { return 0x0123456789abcdef, true },
		Binder:     testBinder{},
		DialUpstream: func(ctx context.Context, client net.Conn, dst netip.AddrPort) (net.Conn, error) {
			h.dials.Add(1)
			v, _ := h.dialedTo.LoadOrStore(dst.String(), new(atomic.Int64))
			v.(*atomic.Int64).Add(1)
			if client == nil {
				return nil, errors.New("test dialer: no client connection")
			}
			to, err := h.route(dst)
			if err != nil {
				return nil, err
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", to)
		},
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() && os.Getenv("PROXY_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if o.logger != nil {
		logger = o.logger
	}
	if o.deps != nil {
		o.deps(h, &deps)
	}
	p, err := New(cfg, deps, logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.p = p
	h.tlsAddr, h.httpAddr = h.tlsL.Addr().String(), h.httpL.Addr().String()
	go p.ServeTLS(h.tlsL)
	go p.ServeHTTP(h.httpL)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return h
}

// upstreamMux is the test origin. sseAck releases the second part of
// streaming responses.
func upstreamMux(sseAck <-chan struct{}) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Host", r.Host)
		w.Header().Set("X-Upstream-AE", r.Header.Get("Accept-Encoding"))
		w.Header().Set("X-Upstream-Peer", r.RemoteAddr)
		w.Header().Set("X-Upstream-Proto", r.Proto)
		fmt.Fprintf(w, "%s host=%s path=%s", upstreamMarker, r.Host, r.URL.Path)
	})
	mux.HandleFunc("/close", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Peer", r.RemoteAddr)
		w.Header().Set("Connection", "close")
		fmt.Fprint(w, upstreamMarker+" closing")
	})
	mux.HandleFunc("/post", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%s got=%d", upstreamMarker, n)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 64<<10)
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		// Event 0, then nothing until the client has acknowledged it via
		// /sse-ack: a proxy that buffers would deadlock here.
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		fmt.Fprint(w, "data: event 0\n\n")
		f.Flush()
		select {
		case <-sseAck:
		case <-r.Context().Done():
			return
		case <-time.After(30 * time.Second):
			return
		}
		fmt.Fprint(w, "data: event 1\n\n")
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		f := w.(http.Flusher)
		fmt.Fprint(w, "part one;")
		f.Flush()
		select {
		case <-sseAck:
		case <-time.After(30 * time.Second):
			return
		}
		fmt.Fprint(w, "part two")
	})
	mux.HandleFunc("/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		fmt.Fprint(w, upstreamMarker+" with trailer")
		w.Header().Set("X-Sum", "42")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		w.WriteHeader(code)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(500 * time.Millisecond)
		fmt.Fprint(w, upstreamMarker+" slow done")
	})
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) }))
	return mux
}

// httpsClient returns a client that sends every connection to the proxy's
// TLS listener with SNI from the URL and trusts the appliance CA.
func (h *harness) httpsClient(keepAlive bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, h.tlsAddr)
		},
		TLSClientConfig:     &tls.Config{RootCAs: h.clientCA},
		DisableKeepAlives:   !keepAlive,
		ForceAttemptHTTP2:   false,
		MaxIdleConnsPerHost: 100,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func (h *harness) httpClient(keepAlive bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, h.httpAddr)
		},
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 100,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return string(b)
}

func mustGet(t testing.TB, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, readAll(t, resp)
}

var _ = errors.New
var _ = strings.Contains

type x509CertPool = x509.CertPool

func newPool() *x509.CertPool { return x509.NewCertPool() }

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

func byteReader(b []byte) io.Reader { return strings.NewReader(string(b)) }

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rawDial opens a plain connection to the proxy's HTTP listener.
func rawDial(t testing.TB, h *harness) (net.Conn, *bufio.Reader) {
	t.Helper()
	return h1test.Dial(t, h.httpAddr)
}

// readResp and wantClosed are the shared raw-client steps (h1test).
var (
	readResp   = h1test.ReadResp
	wantClosed = h1test.WantClosed
)
