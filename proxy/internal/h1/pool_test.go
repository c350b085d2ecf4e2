package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// scripted is a loopback upstream whose every connection runs serve; it
// counts connections.
type scripted struct {
	ln    net.Listener
	conns atomic.Int64
	wg    sync.WaitGroup
	mu    sync.Mutex
	open  []net.Conn
}

func newScripted(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) *scripted {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scripted{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.mu.Lock()
			s.open = append(s.open, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				serve(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *scripted) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", s.ln.Addr().String())
}

// answer reads requests and answers each with a 200 and body, until the
// client leaves; it returns after n answers (n <= 0: no limit).
func answer(n int, body string) func(net.Conn, *bufio.Reader) {
	return func(c net.Conn, br *bufio.Reader) {
		for i := 0; n <= 0 || i < n; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if req.Method == http.MethodHead {
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))
				continue
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
	}
}

var testLimits = Limits{IdleTimeout: time.Minute, HeaderTimeout: 5 * time.Second, MaxHeader: 64 << 10}

func h1Do(t *testing.T, hp *Pool, s *scripted, ctx context.Context, method string, body io.Reader) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, "http://up.test/p", body)
	if err != nil {
		t.Fatal(err)
	}
	return hp.RoundTrip(ctx, req, s.dial)
}

func h1Get(t *testing.T, hp *Pool, s *scripted, method string, body io.Reader) string {
	t.Helper()
	resp, err := h1Do(t, hp, s, context.Background(), method, body)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s: %d %q %v", method, resp.StatusCode, b, err)
	}
	return string(b)
}

// TestH1PoolReuse: requests read to the end share one connection, with and
// without bodies; HEAD (no body) returns the connection at once.
func TestH1PoolReuse(t *testing.T) {
	s := newScripted(t, answer(0, "hello"))
	hp := &Pool{max: 4, lim: testLimits}
	for _, m := range []string{"GET", "HEAD", "GET"} {
		h1Get(t, hp, s, m, nil)
	}
	if got := h1Get(t, hp, s, "POST", strings.NewReader("payload")); got != "hello" {
		t.Fatalf("POST body %q", got)
	}
	h1Get(t, hp, s, "GET", nil)
	if n := s.conns.Load(); n != 1 {
		t.Fatalf("%d connections for 5 keep-alive requests, want 1", n)
	}
	if n := hp.idleCount(); n != 1 {
		t.Fatalf("%d idle after the requests, want 1", n)
	}
}

// TestH1PoolStaleRetry: the server closes the idle connection; a GET
// (replayable) is retried on a fresh one, a POST never sees the dead
// connection (the peek finds it closed).
func TestH1PoolStaleRetry(t *testing.T) {
	s := newScripted(t, answer(1, "once"))
	hp := &Pool{max: 4, lim: testLimits}
	h1Get(t, hp, s, "GET", nil)
	time.Sleep(50 * time.Millisecond) // the server's FIN arrives
	h1Get(t, hp, s, "GET", nil)
	if n := s.conns.Load(); n != 2 {
		t.Fatalf("GET after the server closed the idle conn: %d connections, want 2", n)
	}
	time.Sleep(50 * time.Millisecond)
	if got := h1Get(t, hp, s, "POST", strings.NewReader("x")); got != "once" {
		t.Fatalf("POST %q", got)
	}
	if n := s.conns.Load(); n != 3 {
		t.Fatalf("POST after the server closed the idle conn: %d connections, want 3", n)
	}
}

// TestH1PoolStaleNotRetriedForPOST: a POST that fails on a reused
// connection the peek could not see dead is not sent again.
func TestH1PoolStaleNotRetriedForPOST(t *testing.T) {
	var reqs atomic.Int64
	s := newScripted(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		reqs.Add(1)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		// Read the next request, then drop the connection unanswered.
		if _, err := http.ReadRequest(br); err == nil {
			reqs.Add(1)
		}
	})
	hp := &Pool{max: 4, lim: testLimits}
	h1Get(t, hp, s, "GET", nil)
	_, err := h1Do(t, hp, s, context.Background(), "POST", strings.NewReader("x"))
	if err == nil {
		t.Fatal("POST dropped by the server succeeded")
	}
	var se *staleError
	if errors.As(err, &se) {
		t.Fatalf("error still wrapped: %v", err)
	}
	if n := s.conns.Load(); n != 1 || reqs.Load() != 2 {
		t.Fatalf("POST retried: %d connections, %d requests", n, reqs.Load())
	}
}

// TestH1PoolNotReused: a body closed early, a Connection: close response,
// and unsolicited bytes after a response each end the connection.
func TestH1PoolNotReused(t *testing.T) {
	cases := map[string]struct {
		resp    string
		readAll bool
	}{
		"early close":      {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", false},
		"connection close": {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", true},
		"unsolicited":      {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n", true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			s := newScripted(t, func(c net.Conn, br *bufio.Reader) {
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					io.WriteString(c, tc.resp)
				}
			})
			hp := &Pool{max: 4, lim: testLimits}
			for i := 0; i < 2; i++ {
				resp, err := h1Do(t, hp, s, context.Background(), "GET", nil)
				if err != nil {
					t.Fatal(err)
				}
				if tc.readAll {
					io.ReadAll(resp.Body)
				} else {
					resp.Body.Read(make([]byte, 3))
				}
				resp.Body.Close()
			}
			if n := s.conns.Load(); n != 2 {
				t.Fatalf("%d connections, want 2 (not reused)", n)
			}
			if n := hp.idleCount(); n != 0 {
				t.Fatalf("%d idle", n)
			}
		})
	}
}

// TestH1PoolInformational: 1xx responses before the final one are skipped.
func TestH1PoolInformational(t *testing.T) {
	s := newScripted(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
		io.Copy(io.Discard, br)
	})
	if got := h1Get(t, &Pool{max: 1, lim: testLimits}, s, "GET", nil); got != "final" {
		t.Fatalf("body %q", got)
	}
}

// TestH1PoolLimits: a server that never answers hits the response-header
// timeout (a 504); endless headers hit the cap; a canceled context ends
// the wait at once.
func TestH1PoolLimits(t *testing.T) {
	silent := newScripted(t, func(c net.Conn, br *bufio.Reader) { io.Copy(io.Discard, br) })
	lim := testLimits
	lim.HeaderTimeout = 200 * time.Millisecond
	_, err := h1Do(t, &Pool{max: 1, lim: lim}, silent, context.Background(), "GET", nil)
	if !isTimeout(err) {
		t.Fatalf("silent upstream: %v, want a timeout", err)
	}

	endless := newScripted(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		line := "X-Pad: " + strings.Repeat("a", 1000) + "\r\n"
		for {
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
	})
	_, err = h1Do(t, &Pool{max: 1, lim: testLimits}, endless, context.Background(), "GET", nil)
	if !errors.Is(err, errRespHeaderTooLong) {
		t.Fatalf("endless headers: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err = h1Do(t, &Pool{max: 1, lim: testLimits}, silent, ctx, "GET", nil)
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("canceled request: %v after %v", err, time.Since(start))
	}
}

// TestH1PoolEarlyAnswer: a server that answers a large upload without
// reading it (413) and closes: the client gets the 413, not the write
// error, and the connection is not reused.
func TestH1PoolEarlyAnswer(t *testing.T) {
	s := newScripted(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbig")
		time.Sleep(100 * time.Millisecond)
	})
	hp := &Pool{max: 1, lim: testLimits}
	resp, err := h1Do(t, hp, s, context.Background(), "POST", &zeroReader{n: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || string(b) != "big" {
		t.Fatalf("%d %q", resp.StatusCode, b)
	}
	if hp.idleCount() != 0 {
		t.Fatal("connection with an unfinished upload pooled")
	}
}

// failingBody returns some bytes, then an error (a client whose chunked
// body is malformed).
type failingBody struct{ sent bool }

func (b *failingBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, "part"), nil
	}
	return 0, errors.New("test: malformed chunked body")
}

// TestH1PoolBodyFails: when the client's body fails halfway, the server
// (still waiting for the rest) is not waited on: the exchange fails with
// the body's error instead of hanging (found by FuzzH1Server).
func TestH1PoolBodyFails(t *testing.T) {
	s := newScripted(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body) // waits for a body that never ends
	})
	lim := testLimits
	lim.HeaderTimeout = time.Minute
	hp := &Pool{max: 1, lim: lim}
	start := time.Now()
	_, err := h1Do(t, hp, s, context.Background(), "POST", &failingBody{})
	if err == nil || !strings.Contains(err.Error(), "malformed chunked") {
		t.Fatalf("want the body's error, got %v", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("took %v", d)
	}
}

// TestH1PoolSweepAndClose: sweep closes connections idle too long; a
// closed pool keeps nothing.
func TestH1PoolSweepAndClose(t *testing.T) {
	s := newScripted(t, answer(0, "x"))
	hp := &Pool{max: 4, lim: testLimits}
	h1Get(t, hp, s, "GET", nil)
	hp.Sweep(time.Hour)
	if hp.idleCount() != 1 {
		t.Fatal("sweep closed a fresh connection")
	}
	time.Sleep(20 * time.Millisecond)
	hp.Sweep(10 * time.Millisecond)
	if hp.idleCount() != 0 {
		t.Fatal("sweep kept a connection idle too long")
	}
	resp, err := h1Do(t, hp, s, context.Background(), "GET", nil)
	if err != nil {
		t.Fatal(err)
	}
	hp.Close()
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if hp.idleCount() != 0 {
		t.Fatal("closed pool kept a connection")
	}
	if n := s.conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// TestH1PoolNoIdle: max 0 keeps no idle connection.
func TestH1PoolNoIdle(t *testing.T) {
	s := newScripted(t, answer(0, "x"))
	hp := &Pool{max: 0, lim: testLimits}
	h1Get(t, hp, s, "GET", nil)
	h1Get(t, hp, s, "GET", nil)
	if n := s.conns.Load(); n != 2 || hp.idleCount() != 0 {
		t.Fatalf("max 0: %d connections, %d idle", n, hp.idleCount())
	}
}

// idleCount is the number of idle connections.
// isTimeout is the test proxy.classifyUpstreamErr makes before it answers
// 504 (the proxy's own test of that mapping stays in proxy).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

func (hp *Pool) idleCount() int {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	return len(hp.idle)
}

// zeroReader reads n zero bytes (an upload of unknown length).
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
