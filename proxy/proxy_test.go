package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

func TestHTTPGetAndPost(t *testing.T) {
	h := newHarness(t, nil)
	c := h.httpClient(true)
	req, _ := http.NewRequest("GET", "http://www.good.test/hello?token=secret", nil)
	req.Header.Set("User-Agent", "ua\u2028\u0085x")
	req.Header.Set("Authorization", "Bearer sekrit")
	req.Header.Set("Cookie", "session=sekrit")
	req.Header.Set("Accept-Encoding", "br")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 200 || !strings.Contains(body, upstreamMarker) || !strings.Contains(body, "host=www.good.test") {
		t.Fatalf("GET: %d %q", resp.StatusCode, body)
	}
	if ae := resp.Header.Get("X-Upstream-AE"); ae != "br" {
		t.Fatalf("Accept-Encoding not kept: upstream saw %q", ae)
	}
	r := h.rec.wait(t, "GET record", and(field("method", "GET"), field("host", "www.good.test")))
	if r["path"] != "/hello?redacted" || r["action"] != "allow" || r["rule"] != "allow-test" || r["status"] != float64(200) ||
		r["scheme"] != "http" || r["dst_ip"] != "203.0.113.10" || r["dst_port"] != float64(80) ||
		r["endpoint_id"] != "vpce-00123456789abcdef" || r["instance_id"] != "i-test" {
		t.Fatalf("bad record %v", r)
	}
	h.rec.mu.Lock()
	for _, raw := range h.rec.raw {
		if bytes.Contains(raw, []byte("sekrit")) || bytes.Contains(raw, []byte("secret")) || bytes.Contains(raw, []byte("\u2028")) {
			t.Fatalf("record leaks secrets or control bytes: %s", raw)
		}
	}
	h.rec.mu.Unlock()
	if r["user_agent"] != "ua\u2028\u0085x" {
		t.Fatalf("user_agent %q", r["user_agent"])
	}

	resp, err = c.Post("http://www.good.test/post", "text/plain", strings.NewReader("hello world"))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); !strings.Contains(body, "got=11") {
		t.Fatalf("POST: %q", body)
	}
	r = h.rec.wait(t, "POST record", field("method", "POST"))
	if r["bytes_in"] != float64(11) {
		t.Fatalf("bytes_in %v", r["bytes_in"])
	}
	if n := h.dials.Load(); n != 1 {
		t.Fatalf("expected 1 upstream dial for 2 keep-alive requests, got %d", n)
	}
}

// heapPeak samples HeapInuse until stop is closed.
func heapPeak(stop chan struct{}) func() uint64 {
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() uint64 { <-done; return peak.Load() }
}

type zeroReader struct{ n int64 }

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	k := min(int64(len(p)), z.n)
	clear(p[:k])
	z.n -= k
	return int(k), nil
}

func TestStreaming100MB(t *testing.T) {
	if testing.Short() {
		t.Skip("100 MB transfer")
	}
	const size = 100 << 20
	h := newHarness(t, nil)
	for _, tc := range []struct {
		name   string
		client *http.Client
		base   string
	}{{"http", h.httpClient(true), "http://big.good.test"}, {"https", h.httpsClient(true), "https://big.good.test"}} {
		t.Run(tc.name, func(t *testing.T) {
			// The heap is the whole test binary's: earlier tests' leftovers
			// (connections and goroutines still winding down, more of them
			// on a loaded machine) are in it. Measure the growth.
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			base := ms.HeapInuse
			stop := make(chan struct{})
			peak := heapPeak(stop)
			resp, err := tc.client.Post(tc.base+"/post", "application/octet-stream", io.NopCloser(&zeroReader{size}))
			if err != nil {
				t.Fatal(err)
			}
			if body := readAll(t, resp); !strings.Contains(body, fmt.Sprintf("got=%d", size)) {
				t.Fatalf("POST 100MB: %q", body)
			}
			resp, err = tc.client.Get(tc.base + fmt.Sprintf("/big?n=%d", size))
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != size {
				t.Fatalf("GET 100MB: %d bytes, %v", n, err)
			}
			close(stop)
			p := peak()
			grow := int64(p) - int64(base)
			t.Logf("%s: HeapInuse peak during 2x100MB through the proxy: %.1f MB (%.1f MB before)", tc.name, float64(p)/(1<<20), float64(base)/(1<<20))
			if grow > 40<<20 {
				t.Fatalf("HeapInuse grew by %d bytes: bodies are being buffered", grow)
			}
			r := h.rec.wait(t, "big GET", and(field("path", "/big?redacted"), field("scheme", tc.name)))
			if r["bytes_out"] != float64(size) {
				t.Fatalf("bytes_out %v", r["bytes_out"])
			}
		})
	}
}

func TestBumpLeafFromApplianceCA(t *testing.T) {
	h := newHarness(t, nil)
	resp, body := mustGet(t, h.httpsClient(true), "https://Good.Test/x")
	if resp.StatusCode != 200 || !strings.Contains(body, upstreamMarker) {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	leaf := resp.TLS.PeerCertificates[0]
	if leaf.Issuer.CommonName != h.appCA.Subject.CommonName {
		t.Fatalf("leaf issued by %q, want appliance CA", leaf.Issuer.CommonName)
	}
	if err := leaf.VerifyHostname("good.test"); err != nil {
		t.Fatal(err)
	}
	if resp.TLS.NegotiatedProtocol != "" && resp.TLS.NegotiatedProtocol != "http/1.1" {
		t.Fatalf("alpn %q", resp.TLS.NegotiatedProtocol)
	}
	r := h.rec.wait(t, "bump record", field("sni", "good.test"))
	if r["scheme"] != "https" || r["tls_version"] != "TLSv1.3" || r["action"] != "allow" || r["dst_port"] != float64(443) {
		t.Fatalf("record %v", r)
	}
}

func TestSplice(t *testing.T) {
	h := newHarness(t, nil)
	pool := h.upCA.pool()
	conn, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "splice.test", RootCAs: pool})
	if err != nil {
		t.Fatalf("splice handshake (client trusts only the upstream CA): %v", err)
	}
	if iss := conn.ConnectionState().PeerCertificates[0].Issuer.CommonName; iss != "upstream test CA" {
		t.Fatalf("spliced cert issuer %q", iss)
	}
	fmt.Fprintf(conn, "GET /s HTTP/1.1\r\nHost: splice.test\r\nConnection: close\r\n\r\n")
	b, _ := io.ReadAll(conn)
	conn.Close()
	if !bytes.Contains(b, []byte(upstreamMarker)) {
		t.Fatalf("spliced response %q", b)
	}
	r := h.rec.wait(t, "splice record", field("action", "splice"))
	if r["rule"] != "splice-bank" || r["sni"] != "splice.test" || r["bytes_out"].(float64) < 100 {
		t.Fatalf("record %v", r)
	}
}

func (ca *testCA) pool() *x509CertPool { p := newPool(); p.AddCert(ca.cert); return p }

func TestDenyPage(t *testing.T) {
	h := newHarness(t, nil)
	resp, body := mustGet(t, h.httpsClient(false), "https://blocked.test/")
	if resp.StatusCode != 403 || !strings.Contains(body, "deny-blocked") || strings.Contains(body, upstreamMarker) {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	resp, body = mustGet(t, h.httpClient(false), "http://blocked.test/")
	if resp.StatusCode != 403 || !strings.Contains(body, "deny-blocked") {
		t.Fatalf("http: %d %q", resp.StatusCode, body)
	}
	// Default action (not matched by any rule) is deny too.
	resp, body = mustGet(t, h.httpClient(false), "http://example.com/")
	if resp.StatusCode != 403 || !strings.Contains(body, "default") {
		t.Fatalf("default: %d %q", resp.StatusCode, body)
	}
	h.rec.wait(t, "deny record", and(field("action", "deny"), field("rule", "deny-blocked"), field("scheme", "https")))
	if n := h.dials.Load(); n != 0 {
		t.Fatalf("denied requests dialed upstream %d times", n)
	}
}

func TestReportOnly(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy.ReportOnly = true })
	resp, body := mustGet(t, h.httpClient(false), "http://blocked.test/")
	if resp.StatusCode != 200 || !strings.Contains(body, upstreamMarker) {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	h.rec.wait(t, "report-only record", field("rule", "report_only:deny-blocked"))
}

func TestSNIHostMismatch(t *testing.T) {
	h := newHarness(t, nil)
	c := h.httpsClient(false)
	req, _ := http.NewRequest("GET", "https://good.test/", nil)
	req.Host = "other.test" // allowed by policy on its own, but not this connection's SNI
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusMisdirectedRequest || strings.Contains(body, upstreamMarker) {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	h.rec.wait(t, "mismatch record", field("rule", "sni-host-mismatch"))
	// An absolute-form request line names another host: same refusal.
	conn, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "good.test", RootCAs: h.clientCA})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET http://evil.test/ HTTP/1.1\r\nHost: good.test\r\n\r\n")
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("absolute-form: %d", resp.StatusCode)
	}
}

func TestUpstreamCertFailures(t *testing.T) {
	h := newHarness(t, nil)
	for _, name := range []string{"expired.test", "wrongname.test", "selfsigned.test"} {
		t.Run(name, func(t *testing.T) {
			resp, body := mustGet(t, h.httpsClient(false), "https://"+name+"/")
			if resp.StatusCode != http.StatusBadGateway || strings.Contains(body, upstreamMarker) ||
				!strings.Contains(body, "certificate") {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
			r := h.rec.wait(t, name, and(field("sni", name), field("action", "error")))
			if !strings.Contains(r["upstream_error"].(string), "certificate") || r["status"] != float64(502) {
				t.Fatalf("record %v", r)
			}
		})
	}
}

func TestUpstreamConnectFailure(t *testing.T) {
	h := newHarness(t, nil)
	o := netip.MustParseAddrPort("203.0.113.99:80") // test dialer has no route
	h.override.Store(&o)
	resp, body := mustGet(t, h.httpClient(false), "http://good.test/")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "upstream connection failed") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	h.rec.wait(t, "connect failure", and(field("action", "error"), field("dst_ip", "203.0.113.99")))
}

func TestSSRFMetadataDenied(t *testing.T) {
	h := newHarness(t, nil)
	for _, dst := range []string{"169.254.169.254:80", "[::ffff:169.254.169.254]:80", "[fd00:ec2::254]:80", "[64:ff9b::a9fe:a9fe]:80"} {
		o := netip.MustParseAddrPort(dst)
		h.override.Store(&o)
		resp, body := mustGet(t, h.httpClient(false), "http://good.test/latest/meta-data/")
		if resp.StatusCode != 403 || !strings.Contains(body, "ssrf") {
			t.Fatalf("%s: %d %q", dst, resp.StatusCode, body)
		}
	}
	o := netip.MustParseAddrPort("169.254.169.254:443")
	h.override.Store(&o)
	resp, body := mustGet(t, h.httpsClient(false), "https://good.test/")
	if resp.StatusCode != 403 || !strings.Contains(body, "ssrf:link-local") {
		t.Fatalf("tls: %d %q", resp.StatusCode, body)
	}
	if n := h.dials.Load(); n != 0 {
		t.Fatalf("SSRF destinations were dialed %d times", n)
	}
	h.rec.wait(t, "ssrf record", and(field("dst_ip", "169.254.169.254"), field("rule", "ssrf:link-local")))
}

// noSNIGet speaks HTTPS to the proxy without SNI (ServerName is an IP).
func noSNIGet(t *testing.T, h *harness) (*http.Response, string) {
	conn, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{RootCAs: h.clientCA, ServerName: "203.0.113.10"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: 203.0.113.10\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp, readAll(t, resp)
}

func TestNoSNI(t *testing.T) {
	t.Run("default-deny", func(t *testing.T) {
		h := newHarness(t, nil)
		resp, body := noSNIGet(t, h)
		if resp.StatusCode != 403 || !strings.Contains(body, "no_sni") {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		h.rec.wait(t, "no-sni deny", and(field("rule", "no_sni"), field("action", "deny")))
	})
	t.Run("allow", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.Policy.NoSNIAction = "allow" })
		resp, body := noSNIGet(t, h)
		if resp.StatusCode != 200 || !strings.Contains(body, upstreamMarker) {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
}

// splitWriter delivers the first n bytes in chunk-byte writes with a delay
// between them, and re-frames the first TLS record (the ClientHello) into
// several records.
type splitConn struct {
	net.Conn
	first bool
}

func (c *splitConn) Write(p []byte) (int, error) {
	if c.first || len(p) < 5 || p[0] != 22 {
		return c.Conn.Write(p)
	}
	c.first = true
	body := p[5:]
	var framed []byte
	for len(body) > 0 {
		k := min(len(body), 100)
		framed = append(framed, 22, p[1], p[2], byte(k>>8), byte(k))
		framed = append(framed, body[:k]...)
		body = body[k:]
	}
	for len(framed) > 0 {
		k := min(len(framed), 7)
		if _, err := c.Conn.Write(framed[:k]); err != nil {
			return 0, err
		}
		framed = framed[k:]
		time.Sleep(3 * time.Millisecond)
	}
	return len(p), nil
}

func TestSplitClientHello(t *testing.T) {
	h := newHarness(t, nil)
	raw, err := net.Dial("tcp", h.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(&splitConn{Conn: raw}, &tls.Config{ServerName: "split.test", RootCAs: h.clientCA})
	defer conn.Close()
	fmt.Fprintf(conn, "GET /split HTTP/1.1\r\nHost: split.test\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "path=/split") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

func TestNonTLSAndSilentClients(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ClientHelloTimeout = 300 * time.Millisecond })
	for _, tc := range []struct{ name, send, want string }{
		{"plain-http", "GET / HTTP/1.1\r\nHost: good.test\r\n\r\n", "client hello: not TLS"},
		{"sslv2", "\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10", "client hello: not TLS"},
		{"silent", "", "client hello: timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", h.tlsAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			local := conn.LocalAddr().(*net.TCPAddr).Port
			io.WriteString(conn, tc.send)
			conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			b, err := io.ReadAll(conn)
			if err != nil || len(b) != 0 {
				t.Fatalf("want clean close with no bytes, got %q %v", b, err)
			}
			h.rec.wait(t, tc.name, func(r map[string]any) bool {
				return r["client_port"] == float64(local) && strings.HasPrefix(r["upstream_error"].(string), tc.want)
			})
		})
	}
}

func TestWebSocketThroughBump(t *testing.T) {
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("http2=%v", h2), func(t *testing.T) { webSocketThroughBump(t, h2) })
	}
}

func webSocketThroughBump(t *testing.T, http2 bool) {
	h := newHarness(t, func(c *Config) { c.HTTP2 = http2 })
	raw, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "ws.good.test", RootCAs: h.clientCA, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := websocket.NewConfig("wss://ws.good.test/ws", "https://ws.good.test/")
	ws, err := websocket.NewClient(cfg, raw)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("ping %d", i)
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("echo %q %v", got, err)
		}
	}
	ws.Close()
	r := h.rec.wait(t, "ws record", field("path", "/ws"))
	if r["status"] != float64(101) {
		t.Fatalf("record %v", r)
	}
}

// TestStreamingFlushed: the first part of an SSE or chunked response must
// reach the client while the upstream is still waiting (it waits for the
// client to have seen it), so any buffering in the proxy deadlocks the test.
func TestStreamingFlushed(t *testing.T) {
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("http2=%v", h2), func(t *testing.T) { streamingFlushed(t, h2) })
	}
}

func streamingFlushed(t *testing.T, http2 bool) {
	h := newHarness(t, func(c *Config) { c.HTTP2 = http2 })
	for _, tc := range []struct{ path, first, rest string }{
		{"/sse", "data: event 0\n", "data: event 1"},
		{"/chunked", "part one;", "part two"},
	} {
		resp, err := h.httpsClient(false).Get("https://sse.good.test" + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		buf := make([]byte, len(tc.first))
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != tc.first {
			t.Fatalf("%s: first part %q %v", tc.path, buf, err)
		}
		h.sseAck <- struct{}{}
		rest, _ := io.ReadAll(br)
		resp.Body.Close()
		if !strings.Contains(string(rest), tc.rest) {
			t.Fatalf("%s: rest %q", tc.path, rest)
		}
	}
}

// TestConcurrentBumpAndBaseline runs with http2 on (upstream h2 through
// http.Transport) and off (HTTP/1.1 upstreams through h1.Pool).
func TestConcurrentBumpAndBaseline(t *testing.T) {
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("http2=%v", h2), func(t *testing.T) { concurrentBump(t, h2) })
	}
}

func concurrentBump(t *testing.T, http2 bool) {
	h := newHarness(t, func(c *Config) {
		c.UpstreamIdleTimeout = 300 * time.Millisecond
		c.IdleTimeout = time.Second
		c.HTTP2 = http2
	})
	// Warm up once so lazily started runtime goroutines are in the baseline.
	mustGet(t, h.httpsClient(false), "https://warm.good.test/")
	time.Sleep(500 * time.Millisecond)
	baseG := settleGoroutines(0, 0)
	baseFD := countFDs()
	const n = 500
	var wg sync.WaitGroup
	var fails atomic.Int64
	sem := make(chan struct{}, 100) // the client side's own fd budget
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c := h.httpsClient(false)
			resp, err := c.Get(fmt.Sprintf("https://c%d.good.test/", i%50))
			if err != nil {
				fails.Add(1)
				t.Log(err)
				return
			}
			if b := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(b, upstreamMarker) {
				fails.Add(1)
			}
			c.CloseIdleConnections()
		}(i)
	}
	wg.Wait()
	if f := fails.Load(); f != 0 {
		t.Fatalf("%d of %d failed", f, n)
	}
	g := settleGoroutines(baseG, 30*time.Second)
	fd := countFDs()
	for deadline := time.Now().Add(5 * time.Second); fd > baseFD+5 && time.Now().Before(deadline); fd = countFDs() {
		time.Sleep(50 * time.Millisecond) // idle upstream connections are swept every upstream_idle_timeout
	}
	t.Logf("goroutines baseline %d after %d; fds baseline %d after %d", baseG, g, baseFD, fd)
	if g > baseG+5 {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines did not return to baseline: %d -> %d\n%s", baseG, g, buf[:runtime.Stack(buf, true)])
	}
	if fd > baseFD+5 {
		t.Fatalf("fds did not return to baseline: %d -> %d", baseFD, fd)
	}
}

// settleGoroutines polls until the count is <= target+5 or timeout.
func settleGoroutines(target int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		n := runtime.NumGoroutine()
		if n <= target+5 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func countFDs() int {
	ents, err := readDirNames("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

func TestConnectionLimit(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxConns = 2; c.MaxConnsPerClient = 2; c.ClientHelloTimeout = 5 * time.Second })
	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", h.tlsAddr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// Wait until both are accepted and counted.
	for deadline := time.Now().Add(10 * time.Second); h.p.Stats().ActiveConns < 2; {
		if time.Now().After(deadline) {
			t.Fatal("held connections not accepted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// From another address, so the per-client limit is not what refuses it.
	d := net.Dialer{LocalAddr: privateLoopback()}
	c, err := d.Dial("tcp", h.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("excess connection: %q %v", b, err)
	}
	c.Close()
	h.rec.wait(t, "limit record", func(r map[string]any) bool { return r["upstream_error"] == "connection limit reached" })
	for _, c := range held {
		c.Close()
	}
	if s := h.p.Stats(); s.Limited != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestShutdownFinishesInFlight(t *testing.T) {
	h := newHarness(t, nil)
	c := h.httpsClient(true)
	mustGet(t, c, "https://sd.good.test/") // establish keep-alive
	done := make(chan string, 1)
	go func() {
		resp, err := c.Get("https://sd.good.test/slow")
		if err != nil {
			done <- err.Error()
			return
		}
		done <- readAll(t, resp)
	}()
	h.rec.wait(t, "first request", field("host", "sd.good.test"))
	time.Sleep(100 * time.Millisecond) // let /slow reach the upstream
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := h.p.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if got := <-done; !strings.Contains(got, "slow done") {
		t.Fatalf("in-flight request: %q", got)
	}
	if h.p.Health() == nil {
		t.Fatal("healthy after shutdown")
	}
	if _, err := net.DialTimeout("tcp", h.tlsAddr, time.Second); err == nil {
		t.Fatal("still accepting after shutdown")
	}
}

func TestConnectionCloseKeepsUpstream(t *testing.T) {
	h := newHarness(t, nil)
	for i := 0; i < 5; i++ {
		req, _ := http.NewRequest("GET", "http://cc.good.test/", nil)
		req.Close = true
		resp, err := h.httpClient(false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
	}
	if n := h.dials.Load(); n != 1 {
		t.Fatalf("client Connection: close reached upstream: %d dials for 5 requests", n)
	}
}

// TestUpstreamHTTP1FastPath: with http2 off, bumped GET, HEAD and POST
// requests from two client connections, one of them asking to close, share
// the one pre-verified upstream connection (h1.Pool); an upstream that
// closes after its answer is replaced, and a failing upstream gives the
// page.
func TestUpstreamHTTP1FastPath(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.HTTP2 = false })
	c := h.httpsClient(true)
	var peers []string
	for _, m := range []string{"GET", "HEAD", "POST", "GET"} {
		var body io.Reader
		if m == "POST" {
			body = strings.NewReader("hello")
		}
		req, _ := http.NewRequest(m, "https://fast.good.test/", body)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if b := readAll(t, resp); resp.StatusCode != 200 || m == "GET" && !strings.Contains(b, upstreamMarker) {
			t.Fatalf("%s: %d %q", m, resp.StatusCode, b)
		}
		peers = append(peers, resp.Header.Get("X-Upstream-Peer"))
	}
	req, _ := http.NewRequest("GET", "https://fast.good.test/", nil)
	req.Close = true
	resp, err := h.httpsClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	peers = append(peers, resp.Header.Get("X-Upstream-Peer"))
	for _, p := range peers[1:] {
		if p != peers[0] {
			t.Fatalf("upstream connection not reused: peers %v", peers)
		}
	}
	if n := h.dials.Load(); n != 1 {
		t.Fatalf("%d upstream dials for 5 requests, want 1", n)
	}
	for i := 0; i < 2; i++ {
		resp, body := mustGet(t, c, "https://fast.good.test/close")
		if resp.StatusCode != 200 || !strings.Contains(body, "closing") {
			t.Fatalf("/close: %d %q", resp.StatusCode, body)
		}
	}
	// The first /close used the pooled connection and ended it; the
	// second needed a new one.
	if n := h.dials.Load(); n != 2 {
		t.Fatalf("%d upstream dials after two closing answers, want 2", n)
	}
	o := netip.MustParseAddrPort("203.0.113.99:80") // test dialer has no route
	h.override.Store(&o)
	resp, body := mustGet(t, h.httpClient(false), "http://fast.good.test/")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "upstream connection failed") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}
