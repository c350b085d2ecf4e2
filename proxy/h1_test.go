package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/schema"
)

// TestH1ServerPipelined: every pipelined request is served and recorded
// (the engine's framing is tested in proxy/internal/h1).
func TestH1ServerPipelined(t *testing.T) {
	h := newHarness(t, nil)
	c, br := rawDial(t, h)
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: p.good.test\r\n\r\n"+
		"HEAD /b HTTP/1.1\r\nHost: p.good.test\r\n\r\n"+
		"GET /c?q=1 HTTP/1.1\r\nHost: p.good.test\r\nConnection: close\r\n\r\n")
	for _, tc := range []struct{ method, path string }{{"GET", "/a"}, {"HEAD", "/b"}, {"GET", "/c"}} {
		resp, body := readResp(t, br, tc.method)
		if resp.StatusCode != 200 || tc.method == "GET" && !strings.Contains(body, "path="+tc.path) {
			t.Fatalf("%s %s: status %d %q", tc.method, tc.path, resp.StatusCode, body)
		}
	}
	wantClosed(t, br)
	h.rec.wait(t, "the pipelined HEAD", and(field("method", "HEAD"), field("path", "/b")))
	h.rec.wait(t, "the last request", and(field("method", "GET"), field("path", "/c?redacted")))
}

// TestH1ServerRejects: requests the HTTP/1 engine refuses (as
// net/http.Server would; every case and its status is tested in
// proxy/internal/h1, TestServerRejects) are recorded as errors, reach no
// upstream, and end the connection: one request for each way the engine
// refuses (400, 505 and 501 from the parser's checks, 417 from Expect, 431
// with its half-close).
func TestH1ServerRejects(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxHeaderBytes = 1024 })
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"missing Host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"HTTP/2 as text", "GET / HTTP/2.0\r\nHost: a.good.test\r\n\r\n", 505},
		{"unknown transfer coding", "POST / HTTP/1.1\r\nHost: a.good.test\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		{"unknown expectation", "GET / HTTP/1.1\r\nHost: a.good.test\r\nExpect: magic\r\n\r\n", 417},
		{"header too large", "GET / HTTP/1.1\r\nHost: a.good.test\r\nX-Pad: " + strings.Repeat("p", 8<<10) + "\r\n\r\n", 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := rawDial(t, h)
			go io.WriteString(c, tc.req)
			resp, _ := readResp(t, br, "GET")
			if resp.StatusCode != tc.status || !resp.Close {
				t.Fatalf("status %d close %v, want %d and close", resp.StatusCode, resp.Close, tc.status)
			}
			wantClosed(t, br)
			port := float64(c.LocalAddr().(*net.TCPAddr).Port)
			h.rec.wait(t, "the rejected request", func(r map[string]any) bool {
				return r["client_port"] == port && r["status"] == float64(tc.status) && r["action"] == "error" &&
					strings.HasPrefix(r["upstream_error"].(string), "rejected request: ")
			})
		})
	}
	if n := h.dials.Load(); n != 0 {
		t.Fatalf("rejected requests dialed the upstream %d times", n)
	}
}

func TestH1ServerTrailers(t *testing.T) {
	h := newHarness(t, nil)
	resp, err := h.httpClient(true).Get("http://tr.good.test/trailer")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if !strings.Contains(body, "with trailer") || resp.Trailer.Get("X-Sum") != "42" {
		t.Fatalf("body %q trailer %v", body, resp.Trailer)
	}
}

// TestH1ServerRequestBodies: 100-continue is answered when the upstream
// wants the body and not when the policy denies the request; an unread
// small body of a denied request is drained to keep the connection (the
// engine's side of these, and a large unread body ending the connection,
// are tested in proxy/internal/h1, TestServerRequestBodies).
func TestH1ServerRequestBodies(t *testing.T) {
	h := newHarness(t, nil)
	t.Run("continue", func(t *testing.T) {
		c, br := rawDial(t, h)
		io.WriteString(c, "POST /post HTTP/1.1\r\nHost: e.good.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		if resp, _ := readResp(t, br, "POST"); resp.StatusCode != 100 {
			t.Fatalf("want 100 Continue first, got %s", resp.Status)
		}
		io.WriteString(c, "hello")
		if resp, body := readResp(t, br, "POST"); resp.StatusCode != 200 || !strings.Contains(body, "got=5") {
			t.Fatalf("after the body: %s %q", resp.Status, body)
		}
	})
	t.Run("no continue for a denied request", func(t *testing.T) {
		c, br := rawDial(t, h)
		io.WriteString(c, "POST /x HTTP/1.1\r\nHost: blocked.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		if resp, _ := readResp(t, br, "POST"); resp.StatusCode != 403 || !resp.Close {
			t.Fatalf("want 403 and close, got %s close %v", resp.Status, resp.Close)
		}
		wantClosed(t, br)
	})
	t.Run("small unread body drained", func(t *testing.T) {
		c, br := rawDial(t, h)
		io.WriteString(c, "POST /x HTTP/1.1\r\nHost: blocked.test\r\nContent-Length: 10\r\n\r\n0123456789"+
			"GET /after HTTP/1.1\r\nHost: a.good.test\r\n\r\n")
		if resp, _ := readResp(t, br, "POST"); resp.StatusCode != 403 {
			t.Fatalf("deny: %s", resp.Status)
		}
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || !strings.Contains(body, "path=/after") {
			t.Fatalf("after the drained body: %s %q", resp.Status, body)
		}
	})
}

// TestH1ServerClientGone: a client that leaves during a long response
// ends the request (its upstream wait is canceled) and it is recorded
// without waiting for the upstream.
func TestH1ServerClientGone(t *testing.T) {
	h := newHarness(t, nil)
	c, br := rawDial(t, h)
	io.WriteString(c, "GET /sse HTTP/1.1\r\nHost: gone.good.test\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: event 0\n" {
		t.Fatalf("first event: %q %v", line, err)
	}
	c.Close()
	start := time.Now()
	h.rec.wait(t, "the abandoned stream", and(field("host", "gone.good.test"), field("path", "/sse")))
	t.Logf("record %v after the client left (the upstream would have held it 30 s)", time.Since(start).Round(time.Millisecond))
}

// TestH1ServerShutdown: Proxy.Shutdown closes a keep-alive connection
// waiting for its next request at once; a new connection still gets its
// first request answered (it may have been in flight), with Connection:
// close.
func TestH1ServerShutdown(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.IdleTimeout = time.Minute; c.HeaderReadTimeout = time.Minute })
	c, br := rawDial(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: sd.good.test\r\n\r\n")
	readResp(t, br, "GET")
	cNew, brNew := rawDial(t, h) // connected, no request yet
	h.rec.wait(t, "the request", field("host", "sd.good.test"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- h.p.Shutdown(ctx) }()
	wantClosed(t, br)
	io.WriteString(cNew, "GET /late HTTP/1.1\r\nHost: sd.good.test\r\n\r\n")
	if resp, body := readResp(t, brNew, "GET"); resp.StatusCode != 200 || !resp.Close || !strings.Contains(body, "path=/late") {
		t.Fatalf("first request of a new connection during shutdown: %s close %v %q", resp.Status, resp.Close, body)
	}
	wantClosed(t, brNew)
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
}

// TestH1ServerShutdownSilentNew: a new connection that sends nothing is
// closed within the engine's first-request grace (5 s) of Proxy.Shutdown,
// not after the header timeout.
func TestH1ServerShutdownSilentNew(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.HeaderReadTimeout = time.Minute })
	_, br := rawDial(t, h)
	time.Sleep(100 * time.Millisecond) // accepted and waiting
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := h.p.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	wantClosed(t, br)
	if d := time.Since(start); d > 10*time.Second { // the grace and 5 s of slack
		t.Fatalf("shutdown took %v", d)
	}
}

// panicRecorder panics for records of one host, standing in for a bug in
// a handler.
type panicRecorder struct{ next Recorder }

func (r panicRecorder) ShipRequest(now time.Time, b []byte, m schema.Metrics) error {
	if bytes.Contains(b, []byte("panic.good.test")) {
		panic("test: recorder panic")
	}
	return r.next.ShipRequest(now, b, m)
}

func TestH1ServerHandlerPanic(t *testing.T) {
	h := newHarnessOpts(t, harnessOpts{deps: func(h *harness, d *Deps) { d.Recorder = panicRecorder{d.Recorder} }})
	c, br := rawDial(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: panic.good.test\r\n\r\n")
	readResp(t, br, "GET") // the response was written before the record
	wantClosed(t, br)
	if resp, body := mustGet(t, h.httpClient(false), "http://fine.good.test/"); resp.StatusCode != 200 || !strings.Contains(body, upstreamMarker) {
		t.Fatalf("after a panic: %d %q", resp.StatusCode, body)
	}
}

// FuzzH1Server sends arbitrary bytes as a client and checks that the
// proxy answers or closes, and still serves the next client: the whole
// path (engine, handler, goproxy, upstream pool); proxy/internal/h1's
// FuzzServer fuzzes the engine alone.
func FuzzH1Server(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: f.good.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: f.good.test\r\n\r\nHEAD / HTTP/1.1\r\nHost: f.good.test\r\n\r\n",
		"POST /post HTTP/1.1\r\nHost: f.good.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"POST /post HTTP/1.1\r\nHost: f.good.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: f.good.test\r\n\r\n",
		"POST /post HTTP/1.1\r\nHost: f.good.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
		"GET http://f.good.test/abs HTTP/1.1\r\nHost: other.good.test\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: f.good.test\r\n X: folded\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: f.good.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	h := newHarness(f, func(c *Config) {
		c.HeaderReadTimeout = 200 * time.Millisecond
		c.IdleTimeout = 200 * time.Millisecond
		c.ResponseHeaderTimeout = 2 * time.Second
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", h.httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
		if _, err := io.Copy(io.Discard, c); err != nil && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("proxy neither answered nor closed: %v", err)
		}
		if h.p.Health() != nil {
			t.Fatalf("proxy unhealthy: %v", h.p.Health())
		}
	})
}
