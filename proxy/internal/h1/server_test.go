package h1

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/internal/h1/h1test"
)

// The server's own tests: a Server on a loopback listener with a test
// handler in place of the proxy's, and hooks that keep what the proxy
// would record. What needs the proxy (records, policy, upstreams,
// Proxy.Shutdown) is tested in package proxy (h1_test.go).

// testHooks is the ConnHooks of one test connection.
type testHooks struct {
	mu       sync.Mutex
	rejected []rejection
	stall    atomic.Int32
}

type rejection struct {
	status   int
	reason   string
	bytesOut int64
}

func (k *testHooks) Rejected(status int, reason string, bytesOut int64) {
	k.mu.Lock()
	k.rejected = append(k.rejected, rejection{status, reason, bytesOut})
	k.mu.Unlock()
}

func (k *testHooks) Stall(s Stall) { k.stall.CompareAndSwap(0, int32(s)) }
func (k *testHooks) Stalled() bool { return k.stall.Load() != 0 }

func (k *testHooks) rejections() []rejection {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]rejection(nil), k.rejected...)
}

type harness struct {
	srv  *Server
	addr string
	// ack releases the second part of /chunked.
	ack chan struct{}
	// canceled receives the path of a request whose context ended
	// (the client left) while its handler waited.
	canceled chan string
	// handled counts requests that reached the handler.
	handled atomic.Int64

	mu    sync.Mutex
	conns map[*Conn]struct{}
	hooks map[int]*testHooks // by client port
	wg    sync.WaitGroup
}

// newHarness serves a Server (limits as the proxy's defaults, changed by
// mod) on a loopback listener until the test ends.
func newHarness(t testing.TB, mod func(*Server)) *harness {
	t.Helper()
	return newHarnessTLS(t, mod, nil)
}

// newHarnessTLS is newHarness serving TLS with conf (nil: plain), as the
// proxy serves a bumped connection.
func newHarnessTLS(t testing.TB, mod func(*Server), conf *tls.Config) *harness {
	t.Helper()
	h := &harness{
		ack: make(chan struct{}, 1), canceled: make(chan string, 16),
		conns: map[*Conn]struct{}{}, hooks: map[int]*testHooks{},
	}
	h.srv = &Server{
		Handler:           h.mux(),
		MaxHeaderBytes:    64 << 10,
		HeaderReadTimeout: 30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ProgressTimeout:   30 * time.Second,
		Log:               slog.New(slog.DiscardHandler),
	}
	if mod != nil {
		mod(h.srv)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = l.Addr().String()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				k := &testHooks{}
				port := c.RemoteAddr().(*net.TCPAddr).Port
				var cs *tls.ConnectionState
				if conf != nil {
					tc := tls.Server(c, conf)
					tc.SetDeadline(time.Now().Add(10 * time.Second))
					if tc.Handshake() != nil {
						c.Close()
						return
					}
					tc.SetDeadline(time.Time{})
					st := tc.ConnectionState()
					c, cs = tc, &st
				}
				sc := h.srv.NewConn(context.Background(), c, cs, k)
				h.mu.Lock()
				h.hooks[port] = k
				h.conns[sc] = struct{}{}
				h.mu.Unlock()
				sc.Serve()
				h.mu.Lock()
				delete(h.conns, sc)
				h.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		h.shutdown()
		h.mu.Lock()
		for sc := range h.conns {
			sc.conn.Close()
		}
		h.mu.Unlock()
		h.wg.Wait()
	})
	return h
}

// shutdown is what the proxy's Shutdown does with the server: begin, then
// wake every connection it holds.
func (h *harness) shutdown() {
	h.srv.BeginShutdown()
	h.mu.Lock()
	for sc := range h.conns {
		sc.WakeIfIdle()
	}
	h.mu.Unlock()
}

// waitServed waits until every connection's Serve has returned.
func (h *harness) waitServed(t testing.TB, within time.Duration) {
	t.Helper()
	for end := time.Now().Add(within); ; time.Sleep(10 * time.Millisecond) {
		h.mu.Lock()
		n := len(h.conns)
		h.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%d connections still served after %v", n, within)
		}
	}
}

// hooksOf returns the hooks of the connection whose client end is c.
func (h *harness) hooksOf(c net.Conn) *testHooks {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hooks[c.LocalAddr().(*net.TCPAddr).Port]
}

// mux stands in for the proxy's handler (and the origin behind it).
func (h *harness) mux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body := fmt.Sprintf("host=%s path=%s", r.Host, r.URL.Path)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	})
	mux.HandleFunc("/post", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "got=%d", n)
	})
	// /deny answers without reading the request body, as a policy deny.
	mux.HandleFunc("/deny", func(w http.ResponseWriter, r *http.Request) {
		body := "denied"
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, body)
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		w.WriteHeader(code)
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		f := w.(http.Flusher)
		fmt.Fprint(w, "part one;")
		f.Flush()
		select {
		case <-h.ack:
		case <-time.After(30 * time.Second):
			return
		}
		fmt.Fprint(w, "part two")
	})
	mux.HandleFunc("/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		fmt.Fprint(w, "with trailer")
		w.Header().Set("X-Sum", "42")
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: event 0\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			h.canceled <- r.URL.Path
		case <-time.After(30 * time.Second):
		}
	})
	// /panic answers, then panics (as the proxy's handler would on a
	// bug while recording).
	// /bench answers with a constant body and allocates nothing itself.
	mux.HandleFunc("/bench", func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Length"] = benchLength
		w.Write(benchBody)
	})
	// /tls says what the handler sees of the connection's TLS.
	mux.HandleFunc("/tls/", func(w http.ResponseWriter, r *http.Request) {
		sni := "none"
		if r.TLS != nil {
			sni = r.TLS.ServerName
		}
		body := "sni=" + sni + " path=" + r.URL.Path + " remote=" + r.RemoteAddr
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	})
	// /big?n= writes n bytes of unknown length in 64 KiB writes.
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		buf := make([]byte, 64<<10)
		for ; n > 0; n -= len(buf) {
			if _, err := w.Write(buf[:min(n, len(buf))]); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
		panic("test: handler panic")
	})
	// /panic-early panics before it writes anything.
	mux.HandleFunc("/panic-early", func(w http.ResponseWriter, r *http.Request) {
		panic("test: handler panic")
	})
	// /panic-chunked panics in the middle of a body of unknown length;
	// /abort does so with http.ErrAbortHandler, as ReverseProxy does
	// when the origin's body fails.
	mux.HandleFunc("/panic-chunked", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part one;")
		w.(http.Flusher).Flush()
		if r.Body != nil {
			io.Copy(io.Discard, r.Body)
		}
		panic("test: handler panic")
	})
	mux.HandleFunc("/abort", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part one;")
		panic(http.ErrAbortHandler)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.handled.Add(1)
		mux.ServeHTTP(w, r)
	})
}

// rawDial opens a plain connection to the server.
func rawDial(t testing.TB, h *harness) (net.Conn, *bufio.Reader) {
	t.Helper()
	return h1test.Dial(t, h.addr)
}

// readResp and wantClosed are the shared raw-client steps (h1test).
var (
	readResp   = h1test.ReadResp
	wantClosed = h1test.WantClosed
)

func TestServerPipelined(t *testing.T) {
	h := newHarness(t, nil)
	c, br := rawDial(t, h)
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: p.good.test\r\n\r\n"+
		"HEAD /b HTTP/1.1\r\nHost: p.good.test\r\n\r\n"+
		"GET /c?q=1 HTTP/1.1\r\nHost: p.good.test\r\n\r\n")
	for _, tc := range []struct{ method, path string }{{"GET", "/a"}, {"HEAD", "/b"}, {"GET", "/c"}} {
		resp, body := readResp(t, br, tc.method)
		if resp.StatusCode != 200 || resp.Close {
			t.Fatalf("%s %s: status %d close %v", tc.method, tc.path, resp.StatusCode, resp.Close)
		}
		if tc.method == "HEAD" {
			if body != "" || resp.ContentLength <= 0 {
				t.Fatalf("HEAD: body %q, content-length %d", body, resp.ContentLength)
			}
			continue
		}
		if !strings.Contains(body, "path="+tc.path) || resp.Header.Get("Date") == "" {
			t.Fatalf("%s: %q %v", tc.path, body, resp.Header)
		}
	}
	// 204 and 304 carry no body; the connection goes on after them.
	for _, code := range []string{"204", "304"} {
		io.WriteString(c, "GET /status?code="+code+" HTTP/1.1\r\nHost: p.good.test\r\n\r\n")
		if resp, body := readResp(t, br, "GET"); resp.Status[:3] != code || body != "" || resp.TransferEncoding != nil {
			t.Fatalf("%s: %s %q %v", code, resp.Status, body, resp.TransferEncoding)
		}
	}
	io.WriteString(c, "GET /last HTTP/1.1\r\nHost: p.good.test\r\nConnection: close\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); !resp.Close || !strings.Contains(body, "path=/last") {
		t.Fatalf("last: close %v %q", resp.Close, body)
	}
	wantClosed(t, br)
}

// rejectCases are requests net/http.Server would refuse, with its status.
var rejectCases = []struct {
	name, req string
	status    int
}{
	{"missing Host", "GET / HTTP/1.1\r\n\r\n", 400},
	{"two Hosts", "GET / HTTP/1.1\r\nHost: a.good.test\r\nHost: b.good.test\r\n\r\n", 400},
	{"control byte in a value", "GET / HTTP/1.1\r\nHost: a.good.test\r\nX-Bad: a\x01b\r\n\r\n", 400},
	{"space in a name", "GET / HTTP/1.1\r\nHost: a.good.test\r\nX Bad: 1\r\n\r\n", 400},
	{"not HTTP", "HELLO\r\n\r\n", 400},
	{"HTTP/2 as text", "GET / HTTP/2.0\r\nHost: a.good.test\r\n\r\n", 505},
	{"unknown transfer coding", "POST / HTTP/1.1\r\nHost: a.good.test\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
	{"two lengths", "POST / HTTP/1.1\r\nHost: a.good.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
	{"bad length", "POST / HTTP/1.1\r\nHost: a.good.test\r\nContent-Length: -1\r\n\r\n", 400},
	{"unknown expectation", "GET / HTTP/1.1\r\nHost: a.good.test\r\nExpect: magic\r\n\r\n", 417},
	{"header too large", "GET / HTTP/1.1\r\nHost: a.good.test\r\nX-Pad: " + strings.Repeat("p", 8<<10) + "\r\n\r\n", 431},
}

// TestServerRejects: requests net/http.Server would refuse get the same
// status, reach no handler, end the connection, and are told to the
// hooks (the proxy records them).
func TestServerRejects(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.MaxHeaderBytes = 1024 })
	for _, tc := range rejectCases {
		t.Run(tc.name, func(t *testing.T) {
			c, br := rawDial(t, h)
			go io.WriteString(c, tc.req)
			resp, _ := readResp(t, br, "GET")
			if resp.StatusCode != tc.status || !resp.Close {
				t.Fatalf("status %d close %v, want %d and close", resp.StatusCode, resp.Close, tc.status)
			}
			wantClosed(t, br) // the hooks were told before the close
			rj := h.hooksOf(c).rejections()
			if len(rj) != 1 || rj[0].status != tc.status || rj[0].reason == "" {
				t.Fatalf("hooks told %+v, want one rejection with status %d and a reason", rj, tc.status)
			}
		})
	}
	if n := h.handled.Load(); n != 0 {
		t.Fatalf("rejected requests reached the handler %d times", n)
	}
}

func TestServerHTTP10(t *testing.T) {
	h := newHarness(t, nil)
	c, br := rawDial(t, h)
	io.WriteString(c, "GET /one HTTP/1.0\r\nHost: a.good.test\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); !resp.Close || !strings.Contains(body, "path=/one") {
		t.Fatalf("HTTP/1.0: close %v %q", resp.Close, body)
	}
	wantClosed(t, br)

	c, br = rawDial(t, h)
	for _, path := range []string{"/ka1", "/ka2"} {
		io.WriteString(c, "GET "+path+" HTTP/1.0\r\nHost: a.good.test\r\nConnection: keep-alive\r\n\r\n")
		resp, body := readResp(t, br, "GET")
		if resp.Close || resp.Header.Get("Connection") != "keep-alive" || !strings.Contains(body, "path="+path) {
			t.Fatalf("HTTP/1.0 keep-alive %s: %v %q", path, resp.Header, body)
		}
	}
	// A body of unknown length cannot be chunked for HTTP/1.0: it ends
	// with the connection.
	h.ack <- struct{}{}
	io.WriteString(c, "GET /chunked HTTP/1.0\r\nHost: a.good.test\r\nConnection: keep-alive\r\n\r\n")
	resp, body := readResp(t, br, "GET")
	if resp.TransferEncoding != nil || resp.ContentLength != -1 || body != "part one;part two" {
		t.Fatalf("HTTP/1.0 unknown length: %v %d %q", resp.TransferEncoding, resp.ContentLength, body)
	}
	wantClosed(t, br)
}

func TestServerTrailers(t *testing.T) {
	h := newHarness(t, nil)
	c, br := rawDial(t, h)
	io.WriteString(c, "GET /trailer HTTP/1.1\r\nHost: tr.good.test\r\n\r\n")
	resp, body := readResp(t, br, "GET")
	if !strings.Contains(body, "with trailer") || resp.Trailer.Get("X-Sum") != "42" || len(resp.TransferEncoding) != 1 {
		t.Fatalf("body %q trailer %v transfer-encoding %v", body, resp.Trailer, resp.TransferEncoding)
	}
}

// TestServerRequestBodies: 100-continue is answered when the body is
// wanted and not when it is not; an unread small body is drained to keep
// the connection, a large one ends it.
func TestServerRequestBodies(t *testing.T) {
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
	t.Run("no continue when the body is not read", func(t *testing.T) {
		c, br := rawDial(t, h)
		io.WriteString(c, "POST /deny HTTP/1.1\r\nHost: e.good.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		if resp, _ := readResp(t, br, "POST"); resp.StatusCode != 403 || !resp.Close {
			t.Fatalf("want 403 and close, got %s close %v", resp.Status, resp.Close)
		}
		wantClosed(t, br)
	})
	t.Run("small unread body drained", func(t *testing.T) {
		c, br := rawDial(t, h)
		io.WriteString(c, "POST /deny HTTP/1.1\r\nHost: e.good.test\r\nContent-Length: 10\r\n\r\n0123456789"+
			"GET /after HTTP/1.1\r\nHost: a.good.test\r\n\r\n")
		if resp, _ := readResp(t, br, "POST"); resp.StatusCode != 403 {
			t.Fatalf("deny: %s", resp.Status)
		}
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || !strings.Contains(body, "path=/after") {
			t.Fatalf("after the drained body: %s %q", resp.Status, body)
		}
	})
	t.Run("large unread body closes", func(t *testing.T) {
		c, br := rawDial(t, h)
		io.WriteString(c, "POST /deny HTTP/1.1\r\nHost: e.good.test\r\nContent-Length: 10000000\r\n\r\n")
		go c.Write(make([]byte, 1<<20))
		if resp, _ := readResp(t, br, "POST"); resp.StatusCode != 403 {
			t.Fatalf("deny: %s", resp.Status)
		}
		wantClosed(t, br)
	})
}

func TestServerTimeouts(t *testing.T) {
	h := newHarness(t, func(s *Server) {
		s.HeaderReadTimeout = 300 * time.Millisecond
		s.IdleTimeout = 600 * time.Millisecond
	})
	c, br := rawDial(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: slow") // and nothing more
	start := time.Now()
	wantClosed(t, br)
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("incomplete header closed after %v, before the header timeout", d)
	}

	c, br = rawDial(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: idle.good.test\r\n\r\n")
	readResp(t, br, "GET")
	start = time.Now()
	wantClosed(t, br)
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("idle connection closed after %v, before the idle timeout", d)
	}
}

// TestServerClientGone: a client that leaves during a long response
// cancels the request's context (the proxy's upstream wait), as
// net/http's background read did.
func TestServerClientGone(t *testing.T) {
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
	select {
	case p := <-h.canceled:
		if p != "/sse" {
			t.Fatalf("canceled %s", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request was not canceled after the client left")
	}
}

// TestServerShutdown: shutdown closes a keep-alive connection waiting for
// its next request at once; a new connection still gets its first request
// answered (it may have been in flight), with Connection: close.
func TestServerShutdown(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.IdleTimeout = time.Minute; s.HeaderReadTimeout = time.Minute })
	c, br := rawDial(t, h)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: sd.good.test\r\n\r\n")
	readResp(t, br, "GET")
	cNew, brNew := rawDial(t, h) // connected, no request yet
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		h.mu.Lock()
		n := len(h.conns)
		h.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%d connections served, want 2", n)
		}
	}
	start := time.Now()
	h.shutdown()
	wantClosed(t, br)
	io.WriteString(cNew, "GET /late HTTP/1.1\r\nHost: sd.good.test\r\n\r\n")
	if resp, body := readResp(t, brNew, "GET"); resp.StatusCode != 200 || !resp.Close || !strings.Contains(body, "path=/late") {
		t.Fatalf("first request of a new connection during shutdown: %s close %v %q", resp.Status, resp.Close, body)
	}
	wantClosed(t, brNew)
	h.waitServed(t, 10*time.Second)
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
}

// TestServerShutdownSilentNew: a new connection that sends nothing is
// closed within firstRequestGrace of the shutdown, not after the header
// timeout.
func TestServerShutdownSilentNew(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.HeaderReadTimeout = time.Minute })
	_, br := rawDial(t, h)
	time.Sleep(100 * time.Millisecond) // accepted and waiting
	start := time.Now()
	h.shutdown()
	wantClosed(t, br)
	if d := time.Since(start); d > firstRequestGrace+5*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
}

// TestServerHandlerPanic: a handler that panics ends its own connection
// only.
func TestServerHandlerPanic(t *testing.T) {
	h := newHarness(t, nil)
	c, br := rawDial(t, h)
	io.WriteString(c, "GET /panic HTTP/1.1\r\nHost: panic.good.test\r\n\r\n")
	readResp(t, br, "GET") // the response was written before the panic
	wantClosed(t, br)
	c, br = rawDial(t, h)
	io.WriteString(c, "GET /fine HTTP/1.1\r\nHost: fine.good.test\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || !strings.Contains(body, "path=/fine") {
		t.Fatalf("after a panic: %d %q", resp.StatusCode, body)
	}
}

// TestServerHandlerPanicUnfinished: a handler that panics leaves its
// response unfinished, as net/http does: a client gets no made-up status
// when the handler wrote none, and a body of unknown length is not ended
// with a last chunk (which would pass a truncated body for a whole one).
func TestServerHandlerPanicUnfinished(t *testing.T) {
	h := newHarness(t, nil)
	c, br := rawDial(t, h)
	io.WriteString(c, "GET /panic-early HTTP/1.1\r\nHost: panic.good.test\r\n\r\n")
	wantClosed(t, br)
	for _, req := range []string{
		"GET /panic-chunked HTTP/1.1\r\nHost: panic.good.test\r\n\r\n",
		"POST /panic-chunked HTTP/1.1\r\nHost: panic.good.test\r\nContent-Length: 3\r\n\r\nabc",
		"GET /abort HTTP/1.1\r\nHost: panic.good.test\r\n\r\n",
	} {
		c, br := rawDial(t, h)
		io.WriteString(c, req)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: %v", req, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err == nil || string(b) != "part one;" {
			t.Fatalf("%q: body %q, error %v; want the first part, then an error", req, b, err)
		}
	}
}

// TestServerTLSKeepAlive: on a TLS connection the handler sees the TLS
// state and the client's address, and keep-alive requests are served
// across idle gaps (the idle connection gives back its buffers and waits
// on the TLS connection for one byte: waitLean), also when the next
// request arrives one byte first, or pipelined.
func TestServerTLSKeepAlive(t *testing.T) {
	h := newHarnessTLS(t, nil, &tls.Config{Certificates: []tls.Certificate{selfSigned(t, "h1.test")}})
	raw, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{ServerName: "h1.test", InsecureSkipVerify: true})
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	want := func(path string) {
		t.Helper()
		resp, body := readResp(t, br, "GET")
		if resp.StatusCode != 200 || resp.Close || body != "sni=h1.test path="+path+" remote="+raw.LocalAddr().String() {
			t.Fatalf("%s: %s close %v %q", path, resp.Status, resp.Close, body)
		}
	}
	io.WriteString(c, "GET /tls/1 HTTP/1.1\r\nHost: h1.test\r\n\r\n")
	want("/tls/1")
	time.Sleep(50 * time.Millisecond) // idle: the server waits lean
	io.WriteString(c, "GET /tls/2 HTTP/1.1\r\nHost: h1.test\r\n\r\n")
	want("/tls/2")
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, "G") // a TLS record of one byte, then the rest
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, "ET /tls/3 HTTP/1.1\r\nHost: h1.test\r\n\r\n")
	want("/tls/3")
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, "GET /tls/4 HTTP/1.1\r\nHost: h1.test\r\n\r\nGET /tls/5 HTTP/1.1\r\nHost: h1.test\r\n\r\n")
	want("/tls/4")
	want("/tls/5")
}

// TestServerProgress: a client that stops sending its request body, or
// stops reading the response, loses its connection after ProgressTimeout,
// and the hooks are told which side stalled.
func TestServerProgress(t *testing.T) {
	h := newHarness(t, func(s *Server) { s.ProgressTimeout = 300 * time.Millisecond })
	waitStall := func(t *testing.T, c net.Conn, want Stall) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			var s Stall
			if k := h.hooksOf(c); k != nil { // nil: not served yet
				s = Stall(k.stall.Load())
			}
			if s == want {
				return
			} else if time.Now().After(end) {
				t.Fatalf("stall %d, want %d", s, want)
			}
		}
	}
	t.Run("client stops sending", func(t *testing.T) {
		c, br := rawDial(t, h)
		io.WriteString(c, "POST /post HTTP/1.1\r\nHost: s.good.test\r\nContent-Length: 10\r\n\r\nabc")
		start := time.Now()
		waitStall(t, c, ClientSend)
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Fatalf("stalled after %v, before the progress timeout", d)
		}
		readResp(t, br, "POST") // the handler's answer to its read error
		wantClosed(t, br)
	})
	t.Run("client stops reading", func(t *testing.T) {
		c, br := rawDial(t, h)
		io.WriteString(c, "GET /big?n=1073741824 HTTP/1.1\r\nHost: s.good.test\r\n\r\n")
		waitStall(t, c, ClientRead)
		h.waitServed(t, 10*time.Second)
		io.Copy(io.Discard, br) // what the kernel held, then the end
	})
}

// selfSigned makes a certificate for name.
func selfSigned(t testing.TB, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestScanFields(t *testing.T) {
	for raw, want := range map[string]fields{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n":                                          {host: 1},
		"GET / HTTP/1.1\r\nhOsT: a\r\nX: 1\r\nHOST: b\r\n\r\n":                       {host: 2},
		"GET / HTTP/1.1\r\nX-Host: a\r\nHosts: b\r\n\r\nHost: body":                  {},
		"GET /Host: HTTP/1.1\n\n":                                                    {},
		"POST / HTTP/1.1\r\nContent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n": {contentLength: 1, transferEncoding: 1},
		"": {},
	} {
		if got := scanFields([]byte(raw)); got != want {
			t.Errorf("scanFields(%q) = %+v, want %+v", raw, got, want)
		}
	}
}

// TestServerAmbiguousFraming: a request with both Transfer-Encoding and
// Content-Length, or Transfer-Encoding in HTTP/1.0, is answered (body read
// as chunked, as ReadRequest does) and then the connection ends.
func TestServerAmbiguousFraming(t *testing.T) {
	h := newHarness(t, nil)
	for name, req := range map[string]string{
		"TE and CL": "POST /post HTTP/1.1\r\nHost: f.good.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"3\r\nabc\r\n0\r\n\r\n",
		"TE in HTTP/1.0": "POST /post HTTP/1.0\r\nHost: f.good.test\r\nConnection: keep-alive\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
	} {
		t.Run(name, func(t *testing.T) {
			c, br := rawDial(t, h)
			io.WriteString(c, req+"GET /smuggled HTTP/1.1\r\nHost: f.good.test\r\n\r\n")
			resp, body := readResp(t, br, "POST")
			if resp.StatusCode != 200 || !resp.Close || !strings.Contains(body, "got=3") {
				t.Fatalf("%s close %v %q", resp.Status, resp.Close, body)
			}
			wantClosed(t, br)
		})
	}
}

// FuzzServer sends arbitrary bytes as a client and checks that the server
// answers or closes, and still serves the next client. (FuzzH1Server in
// package proxy does the same through the whole proxy.)
func FuzzServer(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: f.good.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: f.good.test\r\n\r\nHEAD / HTTP/1.1\r\nHost: f.good.test\r\n\r\n",
		"POST /post HTTP/1.1\r\nHost: f.good.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"POST /post HTTP/1.1\r\nHost: f.good.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: f.good.test\r\n\r\n",
		"POST /post HTTP/1.1\r\nHost: f.good.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
		"GET http://f.good.test/abs HTTP/1.1\r\nHost: other.good.test\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: f.good.test\r\n X: folded\r\n\r\n",
		"POST /deny HTTP/1.1\r\nHost: f.good.test\r\nContent-Length: 3\r\n\r\nabcGET /trailer HTTP/1.1\r\nHost: f.good.test\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	h := newHarness(f, func(s *Server) {
		s.HeaderReadTimeout = 200 * time.Millisecond
		s.IdleTimeout = 200 * time.Millisecond
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
		if _, err := io.Copy(io.Discard, c); err != nil && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("server neither answered nor closed: %v", err)
		}
		c2, br := rawDial(t, h)
		io.WriteString(c2, "GET /next HTTP/1.1\r\nHost: f.good.test\r\nConnection: close\r\n\r\n")
		if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || !strings.Contains(body, "path=/next") {
			t.Fatalf("next client: %s %q", resp.Status, body)
		}
	})
}

var (
	benchBody   = []byte("bench body")
	benchLength = []string{strconv.Itoa(len(benchBody))}
)

// BenchmarkServerKeepAlive is the engine's cost per keep-alive request:
// one client connection, requests one after the other to a handler that
// allocates nothing, the client reading each response as raw bytes (its
// own allocations stay out of the figures, save the first response's).
// The server's allocations per request are mostly http.ReadRequest's.
func BenchmarkServerKeepAlive(b *testing.B) {
	h := newHarness(b, nil)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte("GET /bench HTTP/1.1\r\nHost: bench.good.test\r\nUser-Agent: bench\r\n\r\n")
	c.Write(req)
	// The first response tells the length of every response (the Date
	// field has a fixed width).
	var rec recorder
	br := bufio.NewReader(io.TeeReader(c, &rec))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if br.Buffered() != 0 {
		b.Fatal("unexpected bytes after the first response")
	}
	buf := make([]byte, rec.n)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if !strings.HasSuffix(string(buf), string(benchBody)) {
		b.Fatalf("last response %q", buf)
	}
}

// recorder counts the bytes written to it.
type recorder struct{ n int }

func (r *recorder) Write(p []byte) (int, error) { r.n += len(p); return len(p), nil }
