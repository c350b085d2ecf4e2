package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// fastProgress is the progress timeout of these tests.
const fastProgress = 400 * time.Millisecond

// waitIdle waits until the proxy holds no connection.
func waitNoConns(t *testing.T, h *harness) {
	t.Helper()
	waitFor(t, "every connection slot freed", func() bool {
		s := h.p.Stats()
		return s.ActiveConns == 0 && s.Clients == 0
	})
}

// stalledRecord waits for a record whose stalled field is side.
func stalledRecord(t *testing.T, h *harness, side string) map[string]any {
	t.Helper()
	return h.rec.wait(t, "record stalled="+side, field("stalled", side))
}

// closedWithin checks that the proxy ends c (EOF or reset) within d.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(d))
	_, err := io.Copy(io.Discard, c)
	if err != nil && isTimeoutErr(err) {
		t.Fatalf("connection still open after %v", d)
	}
}

// TestSlowBodyCut: a client that sends part of a request body and stops
// is cut at progress_timeout, over plain HTTP and bumped TLS; the record
// says client_send and the slot is freed. A client sending slowly but
// steadily is not cut.
func TestSlowBodyCut(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ProgressTimeout = fastProgress })
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprint("tls=", tlsOn), func(t *testing.T) {
			var c net.Conn
			var err error
			if tlsOn {
				c, err = tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "slowbody.good.test", RootCAs: h.clientCA, NextProtos: []string{"http/1.1"}})
			} else {
				c, err = net.Dial("tcp", h.httpAddr)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			io.WriteString(c, "POST /post HTTP/1.1\r\nHost: slowbody.good.test\r\nContent-Length: 1000\r\n\r\n0123456789")
			closedWithin(t, c, 10*time.Second)
			if el := time.Since(start); el < fastProgress {
				t.Fatalf("cut after %v, before the progress timeout", el)
			}
			r := stalledRecord(t, h, "client_send")
			if r["action"] != "error" || !strings.Contains(r["upstream_error"].(string), "request body") {
				t.Fatalf("record %v", r)
			}
			h.rec.mu.Lock()
			h.rec.recs = nil
			h.rec.mu.Unlock()
			waitNoConns(t, h)
		})
	}
	// Slow but steady: a byte every progress/4 is progress.
	c, br := rawDial(t, h)
	io.WriteString(c, "POST /post HTTP/1.1\r\nHost: steady.good.test\r\nContent-Length: 8\r\n\r\n")
	for i := 0; i < 8; i++ {
		time.Sleep(fastProgress / 4)
		if _, err := c.Write([]byte{'x'}); err != nil {
			t.Fatal(err)
		}
	}
	if resp, body := readResp(t, br, "POST"); resp.StatusCode != 200 || !strings.Contains(body, "got=8") {
		t.Fatalf("steady body: %d %q", resp.StatusCode, body)
	}
}

// TestSlowReaderCut: a client that stops reading a large response is cut
// once a write makes no progress for progress_timeout; the record says
// client_read and the slot (and the upstream connection) is freed.
func TestSlowReaderCut(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ProgressTimeout = fastProgress })
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprint("tls=", tlsOn), func(t *testing.T) {
			d := net.Dialer{Control: smallRcvBuf}
			addr := h.httpAddr
			if tlsOn {
				addr = h.tlsAddr
			}
			raw, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			c := raw
			if tlsOn {
				c = tls.Client(raw, &tls.Config{ServerName: "slowread.good.test", RootCAs: h.clientCA, NextProtos: []string{"http/1.1"}})
			}
			io.WriteString(c, "GET /big?n=200000000 HTTP/1.1\r\nHost: slowread.good.test\r\n\r\n")
			// Read the first bytes, then nothing.
			var b [1024]byte
			if _, err := io.ReadFull(c, b[:]); err != nil {
				t.Fatal(err)
			}
			r := stalledRecord(t, h, "client_read")
			if r["action"] != "error" || r["status"] != float64(200) {
				t.Fatalf("record %v", r)
			}
			if out := r["bytes_out"].(float64); out <= 0 || out >= 200000000 {
				t.Fatalf("bytes_out %v", out)
			}
			h.rec.mu.Lock()
			h.rec.recs = nil
			h.rec.mu.Unlock()
			waitNoConns(t, h)
		})
	}
	if s := h.p.Stats(); s.Stalled < 2 {
		t.Fatalf("stats %+v", s)
	}
}

// smallRcvBuf keeps a client's receive buffer small so that a client that
// does not read fills the path quickly.
func smallRcvBuf(_, _ string, rc syscall.RawConn) error {
	return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
}

// TestHTTP2Stalls: an HTTP/2 stream whose body stops, and one whose
// response the client does not read, are ended at progress_timeout with
// their records saying which; other streams of the same connection go on.
func TestHTTP2Stalls(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ProgressTimeout = fastProgress })
	tr := &http2.Transport{
		DialTLSContext: func(ctx context.Context, network, _ string, cfg *tls.Config) (net.Conn, error) {
			d := tls.Dialer{Config: cfg}
			return d.DialContext(ctx, network, h.tlsAddr)
		},
		TLSClientConfig: &tls.Config{RootCAs: h.clientCA},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	// A body that sends ten bytes and stops.
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte("0123456789"))
	req, _ := http.NewRequest("POST", "https://h2stall.good.test/post", pr)
	req.ContentLength = 1000
	start := time.Now()
	resp, err := c.Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("stalled h2 body not cut")
	}
	r := stalledRecord(t, h, "client_send")
	if r["alpn"] != "h2" {
		t.Fatalf("record %v", r)
	}

	// A response nobody reads: the stream's flow-control window fills.
	resp, err = c.Get("https://h2stall.good.test/big?n=200000000")
	if err != nil {
		t.Fatal(err)
	}
	stalledRecord(t, h, "client_read")
	resp.Body.Close()
	// The connection still serves other streams.
	resp, err = c.Get("https://h2stall.good.test/after")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); !strings.Contains(body, upstreamMarker) {
		t.Fatalf("after the stalls: %q", body)
	}
	// A stream whose upstream is quiet for longer than progress_timeout
	// (server-sent events) is not a stall: nothing is blocked on the
	// client.
	quietUpstream(t, h, c, "https://h2stall.good.test/sse")
	tr.CloseIdleConnections()
	waitNoConns(t, h)
}

// quietUpstream reads the first event of /sse, waits three progress
// timeouts, releases the second event and expects it.
func quietUpstream(t *testing.T, h *harness, c *http.Client, url string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != "data: event 0\n" {
		t.Fatalf("first event %q %v", line, err)
	}
	br.ReadString('\n')
	time.Sleep(3 * fastProgress)
	h.sseAck <- struct{}{}
	if line, err := br.ReadString('\n'); err != nil || line != "data: event 1\n" {
		t.Fatalf("event after a quiet upstream: %q %v", line, err)
	}
}

// TestQuietUpstreamNotStalled: over HTTP/1 (plain and bumped), a response
// whose upstream pauses for longer than progress_timeout is not cut.
func TestQuietUpstreamNotStalled(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ProgressTimeout = fastProgress })
	quietUpstream(t, h, h.httpClient(true), "http://quiet.good.test/sse")
	quietUpstream(t, h, h.httpsClient(true), "https://quiet.good.test/sse")
	if s := h.p.Stats(); s.Stalled != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestSpliceSlowReader: a spliced client that stops reading is cut at
// progress_timeout (well before splice_idle_timeout), recorded
// client_read.
func TestSpliceSlowReader(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ProgressTimeout = fastProgress })
	d := net.Dialer{Control: smallRcvBuf}
	raw, err := d.Dial("tcp", h.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// The upstream certificate is the test CA's; the client trusts it
	// (the splice hands it the upstream's own handshake).
	c := tls.Client(raw, &tls.Config{ServerName: "splice.test", RootCAs: h.upCA.pool(), NextProtos: []string{"http/1.1"}})
	io.WriteString(c, "GET /big?n=200000000 HTTP/1.1\r\nHost: splice.test\r\n\r\n")
	var b [1024]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatal(err)
	}
	r := stalledRecord(t, h, "client_read")
	if r["action"] != "error" || r["rule"] != "splice-bank" {
		t.Fatalf("record %v", r)
	}
	waitNoConns(t, h)
}

// TestPerClientCap: one client address at its cap gets a 503 page on
// port 80 and a clean close on 443, recorded (rate limited) and counted;
// another client address is served meanwhile; when the first client
// closes a connection it may open one again.
func TestPerClientCap(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxConns = 50; c.MaxConnsPerClient = 3 })
	greedy, other := privateLoopback(), privateLoopback()
	dial := func(from *net.TCPAddr, addr string) net.Conn {
		d := net.Dialer{LocalAddr: from}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var held []net.Conn
	for i := 0; i < 3; i++ {
		held = append(held, dial(greedy, h.httpAddr))
	}
	waitFor(t, "greedy connections accepted", func() bool { return h.p.Stats().TopClientConns == 3 })

	// Over the cap on port 80: a 503 page, then the close.
	c := dial(greedy, h.httpAddr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: greedy.good.test\r\n\r\n")
	br := bufio.NewReader(c)
	resp, body := readResp(t, br, "GET")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "per-client connection limit") {
		t.Fatalf("over the cap: %d %q", resp.StatusCode, body)
	}
	wantClosed(t, br)
	// Over the cap on 443: closed cleanly (EOF, not a reset), no bytes.
	c = dial(greedy, h.tlsAddr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("TLS over the cap: %q %v", b, err)
	}
	r := h.rec.wait(t, "cap record", field("rule", "limit:max_conns_per_client"))
	if r["client_ip"] != greedy.IP.String() {
		t.Fatalf("record %v", r)
	}

	// Another client is served while the greedy one is at its cap.
	oc := dial(other, h.httpAddr)
	oc.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(oc, "GET /x HTTP/1.1\r\nHost: other.good.test\r\n\r\n")
	if resp, body := readResp(t, bufio.NewReader(oc), "GET"); resp.StatusCode != 200 || !strings.Contains(body, upstreamMarker) {
		t.Fatalf("other client: %d %q", resp.StatusCode, body)
	}
	// The greedy client frees one slot and gets one again.
	held[0].Close()
	waitFor(t, "greedy slot freed", func() bool { return h.p.Stats().TopClientConns <= 2 })
	c = dial(greedy, h.httpAddr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /y HTTP/1.1\r\nHost: greedy.good.test\r\n\r\n")
	if resp, _ := readResp(t, bufio.NewReader(c), "GET"); resp.StatusCode != 200 {
		t.Fatalf("greedy after freeing: %d", resp.StatusCode)
	}
	s := h.p.Stats()
	if s.ClientLimited != 2 || s.MaxConnsPerClient != 3 || s.MaxConns != 50 || s.Saturation <= 0 {
		t.Fatalf("stats %+v", s)
	}
	if err := h.p.Health(); err != nil {
		t.Fatalf("saturation must not fail health: %v", err)
	}
}

// TestRefusalRecordsRateLimited: a flood of refused connections yields a
// bounded number of records, and a later record says how many were left
// out; every refusal is counted.
func TestRefusalRecordsRateLimited(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxConns = 50; c.MaxConnsPerClient = 1 })
	from := privateLoopback()
	d := net.Dialer{LocalAddr: from}
	keep, err := d.Dial("tcp", h.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	waitFor(t, "first connection accepted", func() bool { return h.p.Stats().TopClientConns == 1 })
	const flood = 100
	start := time.Now()
	for i := 0; i < flood; i++ {
		c, err := d.Dial("tcp", h.httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	waitFor(t, "refusals counted", func() bool { return h.p.Stats().ClientLimited == flood })
	allowed := refusalBurst + int(time.Since(start).Seconds()*refusalRate) + 1
	count := func() int {
		h.rec.mu.Lock()
		defer h.rec.mu.Unlock()
		n := 0
		for _, r := range h.rec.recs {
			if r["rule"] == "limit:max_conns_per_client" {
				n++
			}
		}
		return n
	}
	if n := count(); n > allowed || n < refusalBurst/2 {
		t.Fatalf("%d refusal records for %d refusals", n, flood)
	}
	time.Sleep(200 * time.Millisecond)
	c, _ := d.Dial("tcp", h.httpAddr)
	c.Close()
	h.rec.wait(t, "record naming the left-out refusals", func(r map[string]any) bool {
		s, _ := r["upstream_error"].(string)
		return strings.Contains(s, "more refusals not recorded")
	})
	if s := h.p.Stats(); s.RefusalRecordsDropped == 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestIdleConnsHeldAndReleased holds thousands of idle bumped keep-alive
// connections (each from its own 127.x address, one request each) and
// releases them: while held, the proxy keeps one goroutine per client
// connection (no upstream reader goroutines) and upstream connections
// stay pooled, not one per client; after release goroutines and
// descriptors return to where they were. Shared and per-client upstream
// modes.
func TestIdleConnsHeldAndReleased(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 300
	}
	for _, perClient := range []bool{false, true} {
		t.Run(fmt.Sprint("per_client=", perClient), func(t *testing.T) {
			var h *harness
			if perClient {
				h, _ = perClientHarness(t)
			} else {
				// Few pooled upstream connections, so that they do not
				// blur the per-client figures.
				h = newHarness(t, func(c *Config) { c.HTTP2 = false; c.UpstreamIdlePerDest = 4 })
			}
			warm := heldConns(t, h, 1)
			warm[0].Close()
			waitNoConns(t, h)
			h.p.up.closeIdle()
			time.Sleep(100 * time.Millisecond)
			runtime.GC()
			g0, fd0 := runtime.NumGoroutine(), countFDs()
			conns := heldConns(t, h, n)
			time.Sleep(200 * time.Millisecond)
			g1, fd1 := runtime.NumGoroutine(), countFDs()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			// Per connection: the proxy's serving goroutine; per-client
			// mode adds the test upstream's own serving goroutine.
			wantG := 1.0
			wantFD := 2.0 // client socket + accepted socket
			if perClient {
				wantG, wantFD = 2.0, 4.0 // + upstream socket + its accepted socket
			}
			perG := float64(g1-g0) / float64(n)
			perFD := float64(fd1-fd0) / float64(n)
			t.Logf("%d idle bumped connections: %.2f goroutines and %.2f fds each (test client and upstream included); heap in use %d MiB",
				n, perG, perFD, ms.HeapInuse>>20)
			slack := 0.02 + 64/float64(n) // pooled upstream connections, connections still closing
			if perG > wantG+slack || perFD > wantFD+slack {
				t.Fatalf("per idle connection: %.2f goroutines (want <= %.0f), %.2f fds (want <= %.0f)", perG, wantG, perFD, wantFD)
			}
			if s := h.p.Stats(); s.ActiveConns != n {
				t.Fatalf("active %d want %d", s.ActiveConns, n)
			}
			for _, c := range conns {
				c.Close()
			}
			waitNoConns(t, h)
			h.p.up.closeIdle() // pooled upstream connections are not the clients'
			waitFor(t, "goroutines and fds back", func() bool {
				return runtime.NumGoroutine() <= g0+10 && countFDs() <= fd0+10
			})
		})
	}
}

// heldConns opens n bumped HTTP/1.1 connections through the proxy, each
// from its own loopback address, completes one request on each and
// returns them open.
func heldConns(t *testing.T, h *harness, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			// SO_REUSEADDR: in per-client mode the upstream socket is bound
			// to this socket's address too.
			d := net.Dialer{LocalAddr: privateLoopback(), Timeout: 20 * time.Second, Control: reuseAddr}
			raw, err := d.Dial("tcp", h.tlsAddr)
			if err != nil {
				errs <- err
				return
			}
			c := tls.Client(raw, &tls.Config{ServerName: fmt.Sprintf("idle%d.good.test", i%4), RootCAs: h.clientCA, NextProtos: []string{"http/1.1"}})
			c.SetDeadline(time.Now().Add(60 * time.Second))
			fmt.Fprintf(c, "GET /idle HTTP/1.1\r\nHost: idle%d.good.test\r\n\r\n", i%4)
			br := bufio.NewReaderSize(c, 512)
			resp, err := http.ReadResponse(br, nil)
			if err == nil {
				var b []byte
				b, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
				}
			}
			if err != nil {
				c.Close()
				errs <- err
				return
			}
			c.SetDeadline(time.Time{})
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		t.Fatal(err)
	}
	return conns
}

// TestTrimWhenQuiet: the idle trim runs once after a burst, once the
// proxy is quiet, not again while idle, not after a burst that allocated
// too little, and not sooner than minGap after the last one.
func TestTrimWhenQuiet(t *testing.T) {
	h := newHarness(t, nil)
	var mu sync.Mutex
	var trims []time.Time
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pol := trimPolicy{quiet: 300 * time.Millisecond, minGap: 2 * time.Second, minAlloc: 1 << 20}
	go h.p.trimWhenQuiet(ctx, pol, func() { mu.Lock(); trims = append(trims, time.Now()); mu.Unlock() })
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(trims) }
	c := h.httpClient(false)
	get := func() {
		resp, body := mustGet(t, c, "http://trim.good.test/")
		if resp.StatusCode != 200 || !strings.Contains(body, upstreamMarker) {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	}
	burst := func() {
		for i := 0; i < 5; i++ {
			get()
		}
		garbage = make([]byte, 2<<20) // the burst's allocations
	}
	burst()
	start := time.Now()
	waitFor(t, "trim after the burst", func() bool { return count() == 1 })
	if time.Since(start) < pol.quiet/2 {
		t.Fatal("trimmed before the proxy was quiet")
	}
	time.Sleep(4 * pol.quiet)
	if n := count(); n != 1 {
		t.Fatalf("%d trims while idle, want 1", n)
	}
	// A burst within minGap of the first trim is trimmed, but only
	// minGap after the first.
	burst()
	waitFor(t, "trim after the second burst", func() bool { return count() == 2 })
	mu.Lock()
	gap := trims[1].Sub(trims[0])
	mu.Unlock()
	if gap < pol.minGap {
		t.Fatalf("trims %v apart, want >= %v", gap, pol.minGap)
	}
	// Work that allocates little is not worth a collection.
	pol2 := trimPolicy{quiet: 300 * time.Millisecond, minGap: time.Millisecond, minAlloc: 1 << 40}
	var n2 atomic.Int32
	go h.p.trimWhenQuiet(ctx, pol2, func() { n2.Add(1) })
	get()
	time.Sleep(6 * pol2.quiet)
	if n2.Load() != 0 {
		t.Fatal("trimmed after a burst that allocated little")
	}
}

var garbage []byte

// TestSizeMaxConns: max_conns 0 follows memory within its bounds; an
// explicit limit that cannot fit is refused naming the field, by New too.
func TestSizeMaxConns(t *testing.T) {
	const gib = 1 << 30
	for _, tc := range []struct {
		set  int
		mem  uint64
		want int
		err  bool
	}{
		{0, 0, 20000, false},
		{0, 1 * gib, 4096, false},
		{0, 16 * gib, 65536, false},
		{0, 256 * gib, maxAutoConns, false},
		{0, 16 << 20, minAutoConns, false},
		{20000, 0, 20000, false},
		{20000, 4 * gib, 20000, false},
		{20000, 2 * gib, 0, true},
		{5000, 1 * gib, 5000, false},
	} {
		got, err := SizeMaxConns(tc.set, tc.mem)
		if tc.err {
			if err == nil || !strings.HasPrefix(err.Error(), "max_conns: ") {
				t.Errorf("SizeMaxConns(%d, %d) = %d, %v; want an error naming max_conns", tc.set, tc.mem, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("SizeMaxConns(%d, %d) = %d, %v; want %d", tc.set, tc.mem, got, err, tc.want)
		}
	}
	if got := perClientCap(0, 20000); got != 2500 {
		t.Errorf("default per-client cap %d", got)
	}
	if got := perClientCap(0, 4); got != 1 {
		t.Errorf("per-client cap of a tiny limit %d", got)
	}
	if got := perClientCap(50000, 100); got != 100 {
		t.Errorf("per-client cap above max_conns %d", got)
	}
	cfg := DefaultConfig()
	cfg.MaxConns = 100000
	_, err := New(cfg, Deps{Recorder: &memRecorder{}, Memory: 1 << 30}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "max_conns: 100000") {
		t.Fatalf("New with a limit that does not fit: %v", err)
	}
	cfg.MaxConns = 0
	p, err := New(cfg, Deps{Recorder: &memRecorder{}, Memory: 1 << 30}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	if s := p.Stats(); s.MaxConns != 4096 || s.MaxConnsPerClient != 512 {
		t.Fatalf("stats %+v", s)
	}
}

// TestPerClientCapPerEndpoint: VPCs behind one GWLB overlap, so the same
// client address arriving through two endpoints is two clients: one at
// its cap does not refuse the other.
func TestPerClientCapPerEndpoint(t *testing.T) {
	addr := privateLoopback()
	// Connections from even local ports come through endpoint A, odd
	// through endpoint B.
	h := newHarnessOpts(t, harnessOpts{
		cfg: func(c *Config) { c.MaxConns = 50; c.MaxConnsPerClient = 2 },
		deps: func(_ *harness, d *Deps) {
			d.EndpointOf = func(c net.Conn) (uint64, bool) {
				return 0xa0 + uint64(c.RemoteAddr().(*net.TCPAddr).Port%2), true
			}
		},
	})
	dial := func(parity int) net.Conn {
		for {
			c, err := net.DialTCP("tcp", &net.TCPAddr{IP: addr.IP}, mustTCPAddr(t, h.httpAddr))
			if err != nil {
				t.Fatal(err)
			}
			if c.LocalAddr().(*net.TCPAddr).Port%2 == parity {
				t.Cleanup(func() { c.Close() })
				return c
			}
			c.Close()
		}
	}
	get := func(c net.Conn, host string) int {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		resp, _ := readResp(t, bufio.NewReader(c), "GET")
		return resp.StatusCode
	}
	for i := 0; i < 2; i++ {
		if s := get(dial(0), "a.good.test"); s != 200 {
			t.Fatalf("endpoint A connection %d: %d", i, s)
		}
	}
	if s := get(dial(0), "a.good.test"); s != http.StatusServiceUnavailable {
		t.Fatalf("endpoint A over its cap: %d", s)
	}
	if s := get(dial(1), "b.good.test"); s != 200 {
		t.Fatalf("the same address through endpoint B while A's is at its cap: %d", s)
	}
	if s := h.p.Stats(); s.Clients != 2 {
		t.Fatalf("stats %+v: want 2 clients", s)
	}
}

func mustTCPAddr(t *testing.T, addr string) *net.TCPAddr {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
