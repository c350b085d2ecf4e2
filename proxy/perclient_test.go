package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// reuseAddr sets SO_REUSEADDR, so that a client socket and an upstream
// socket can both be bound to the same loopback ip:port (with different
// peers), as a client connection and its tunnel-mode upstream are.
func reuseAddr(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	}); err != nil {
		return err
	}
	return serr
}

// bindDialer plays steer's tunnel-mode DialUpstream on loopback: the
// upstream connection is bound to the client's own ip:port, so the kernel
// itself refuses a second concurrent upstream for one client (same
// 4-tuple). It also counts, per client connection, dials and upstreams
// open at once, and records any overlap as a violation.
type bindDialer struct {
	h          *harness
	mu         sync.Mutex
	dials      map[string]int // client addr -> dials
	open       map[string]int // client addr -> upstreams open now
	violations []string
	clients    map[net.Conn]bool
}

func newBindDialer(h *harness) *bindDialer {
	return &bindDialer{h: h, dials: map[string]int{}, open: map[string]int{}, clients: map[net.Conn]bool{}}
}

func (b *bindDialer) dial(ctx context.Context, client net.Conn, dst netip.AddrPort) (net.Conn, error) {
	b.h.dials.Add(1)
	if client == nil {
		return nil, fmt.Errorf("bind dialer: no client connection")
	}
	src := client.RemoteAddr().(*net.TCPAddr)
	key := src.String()
	b.mu.Lock()
	b.clients[client] = true
	b.dials[key]++
	if b.open[key] > 0 {
		b.violations = append(b.violations, fmt.Sprintf("second upstream for client %s while one is open", key))
	}
	b.open[key]++
	b.mu.Unlock()
	to, err := b.h.route(dst)
	if err == nil {
		d := net.Dialer{LocalAddr: src, Control: reuseAddr}
		var c net.Conn
		if c, err = d.DialContext(ctx, "tcp", to); err == nil {
			return &trackedUp{Conn: c, done: func() { b.closed(key) }}, nil
		}
	}
	b.closed(key)
	return nil, err
}

func (b *bindDialer) closed(key string) {
	b.mu.Lock()
	b.open[key]--
	b.mu.Unlock()
}

func (b *bindDialer) openTotal() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, v := range b.open {
		n += v
	}
	return n
}

type trackedUp struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *trackedUp) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.done)
	return err
}

func perClientHarness(t testing.TB) (*harness, *bindDialer) {
	var bd *bindDialer
	h := newHarnessOpts(t, harnessOpts{deps: func(h *harness, d *Deps) {
		bd = newBindDialer(h)
		d.DialUpstream = bd.dial
		d.UpstreamPerClient = true
	}})
	return h, bd
}

// loopbackIPs numbers the clients' source addresses (privateLoopback).
var loopbackIPs atomic.Uint32

// privateLoopback is a local address for a client socket: an address of
// 127.0.0.0/8 that no other socket on the machine uses. The bind dialer
// binds upstream sockets to the client's address and port; on 127.0.0.1
// that port may also be the ephemeral port of some unrelated connection
// (connect shares ports across destinations), and the bind then fails
// with EADDRINUSE (seen once in CI under parallel packages).
func privateLoopback() *net.TCPAddr {
	n := loopbackIPs.Add(1)
	return &net.TCPAddr{IP: net.IPv4(127, 88, byte(n>>8), byte(n))}
}

// oneConnClient is a keep-alive client that uses exactly one connection to
// addr (bound with SO_REUSEADDR) and reports its local address.
func oneConnClient(h *harness, addr string, local *atomic.Pointer[string]) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: privateLoopback(), Control: reuseAddr}
			c, err := d.DialContext(ctx, network, addr)
			if err == nil {
				s := c.LocalAddr().String()
				local.Store(&s)
			}
			return c, err
		},
		TLSClientConfig:   &tls.Config{RootCAs: h.clientCA},
		ForceAttemptHTTP2: true, // the proxy must still answer HTTP/1.1
		MaxConnsPerHost:   1,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUpstreamPerClient: in per-client mode every client connection gets
// exactly one upstream connection, bound to the client's own address (the
// upstream sees the client as its peer), used for all its requests
// including the first (the pre-verified one), never shared with another
// client, and closed when the client connection ends. Bumped clients get
// HTTP/1.1 even when they offer h2.
func TestUpstreamPerClient(t *testing.T) {
	h, bd := perClientHarness(t)
	const clients, reqs = 4, 5
	type result struct {
		local string
		peers []string
		proto []int
	}
	res := make([]result, clients*2)
	var wg sync.WaitGroup
	var cls []*http.Client
	for i := range res {
		isTLS := i%2 == 0
		addr, url := h.httpAddr, "http://pc.good.test/"
		if isTLS {
			addr, url = h.tlsAddr, "https://pc.good.test/"
		}
		var local atomic.Pointer[string]
		c := oneConnClient(h, addr, &local)
		cls = append(cls, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < reqs; j++ {
				resp, err := c.Get(url)
				if err != nil {
					t.Errorf("client %d request %d: %v", i, j, err)
					return
				}
				body := readAll(t, resp)
				if resp.StatusCode != 200 {
					t.Errorf("client %d request %d: %d %q", i, j, resp.StatusCode, body)
					return
				}
				if p := resp.Header.Get("X-Upstream-Proto"); p != "HTTP/1.1" {
					t.Errorf("client %d: upstream spoke %s in per-client mode", i, p)
				}
				res[i].peers = append(res[i].peers, resp.Header.Get("X-Upstream-Peer"))
				res[i].proto = append(res[i].proto, resp.ProtoMajor)
			}
			res[i].local = *local.Load()
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	bd.mu.Lock()
	if len(bd.violations) > 0 {
		t.Errorf("violations: %v", bd.violations)
	}
	for i, r := range res {
		for j, peer := range r.peers {
			if peer != r.local {
				t.Errorf("client %d (%s) request %d: upstream saw peer %s, not the client's address", i, r.local, j, peer)
			}
			if r.proto[j] != 1 {
				t.Errorf("client %d: HTTP/%d in per-client mode, want HTTP/1.1", i, r.proto[j])
			}
		}
		if n := bd.dials[r.local]; n != 1 {
			t.Errorf("client %d (%s): %d upstream dials for %d keep-alive requests, want 1", i, r.local, n, reqs)
		}
	}
	if len(bd.clients) != len(res) {
		t.Errorf("dialer saw %d distinct client conns, want %d", len(bd.clients), len(res))
	}
	bd.mu.Unlock()
	if n := h.dials.Load(); n != int64(len(res)) {
		t.Errorf("%d dials for %d client connections (the pre-verified connection must serve the first request)", n, len(res))
	}
	if s := h.p.Stats(); s.UpstreamPools != 0 || !s.UpstreamPerClient {
		t.Errorf("stats: pools %d per-client %v", s.UpstreamPools, s.UpstreamPerClient)
	}
	if bd.openTotal() != len(res) {
		t.Errorf("%d upstreams open while clients idle, want %d", bd.openTotal(), len(res))
	}
	for _, c := range cls {
		c.CloseIdleConnections()
	}
	waitFor(t, "upstreams closed with their clients", func() bool { return bd.openTotal() == 0 })
}

// TestUpstreamPerClientUpstreamCloses: when the upstream ends its
// connection (Connection: close), the client connection is closed after
// that response too, so the client's next request comes on a new
// connection with its own upstream instead of redialing the old 5-tuple.
func TestUpstreamPerClientUpstreamCloses(t *testing.T) {
	h, bd := perClientHarness(t)
	for _, base := range []string{"http://redial.good.test", "https://redial.good.test"} {
		var local atomic.Pointer[string]
		addr := h.httpAddr
		if base[4] == 's' {
			addr = h.tlsAddr
		}
		c := oneConnClient(h, addr, &local)
		seen := map[string]bool{}
		for i := 0; i < 3; i++ {
			resp, err := c.Get(base + "/close")
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
			client := *local.Load()
			if resp.StatusCode != 200 || resp.Header.Get("X-Upstream-Peer") != client || !resp.Close {
				t.Fatalf("%s request %d: %d peer %q client %q close %v", base, i, resp.StatusCode, resp.Header.Get("X-Upstream-Peer"), client, resp.Close)
			}
			seen[client] = true
		}
		c.CloseIdleConnections()
		if len(seen) != 3 {
			t.Fatalf("%s: 3 requests after Connection: close used %d client connections", base, len(seen))
		}
		bd.mu.Lock()
		for a := range seen {
			if bd.dials[a] != 1 {
				t.Errorf("%s: client %s dialed %d times", base, a, bd.dials[a])
			}
		}
		if len(bd.violations) > 0 {
			t.Errorf("violations: %v", bd.violations)
		}
		bd.mu.Unlock()
	}
	waitFor(t, "upstreams closed", func() bool { return bd.openTotal() == 0 })
}

// TestUpstreamSharedPool: in shared mode (nat) the dialer still gets the
// client connection, and new client connections reuse the pooled upstream.
func TestUpstreamSharedPool(t *testing.T) {
	var mu sync.Mutex
	var clients []net.Conn
	h := newHarnessOpts(t, harnessOpts{deps: func(h *harness, d *Deps) {
		inner := d.DialUpstream
		d.DialUpstream = func(ctx context.Context, client net.Conn, dst netip.AddrPort) (net.Conn, error) {
			mu.Lock()
			clients = append(clients, client)
			mu.Unlock()
			return inner(ctx, client, dst)
		}
	}})
	var peers []string
	for i := 0; i < 4; i++ {
		resp, _ := mustGet(t, h.httpsClient(false), "https://shared.good.test/")
		peers = append(peers, resp.Header.Get("X-Upstream-Peer"))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(clients) != 1 || clients[0] == nil {
		t.Fatalf("shared mode: %d dials (%v) for 4 client connections, want 1 with the client conn", len(clients), clients)
	}
	for _, p := range peers[1:] {
		if p != peers[0] {
			t.Fatalf("shared mode did not reuse the pooled upstream: peers %v", peers)
		}
	}
	if s := h.p.Stats(); s.UpstreamPools != 1 || s.UpstreamPerClient {
		t.Fatalf("stats: pools %d per-client %v", s.UpstreamPools, s.UpstreamPerClient)
	}
}

// TestSplicePerClient: a splice in per-client mode dials once, bound to the
// client's address, and closes the upstream with the client.
func TestSplicePerClient(t *testing.T) {
	h, bd := perClientHarness(t)
	pool := newPool()
	pool.AddCert(h.upCA.cert)
	d := &net.Dialer{LocalAddr: privateLoopback(), Control: reuseAddr}
	conn, err := tls.DialWithDialer(d, "tcp", h.tlsAddr, &tls.Config{ServerName: "splice.test", RootCAs: pool})
	if err != nil {
		t.Fatalf("splice handshake (must reach the real upstream): %v", err)
	}
	fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: splice.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if peer := resp.Header.Get("X-Upstream-Peer"); peer != conn.LocalAddr().String() {
		t.Fatalf("spliced upstream saw peer %s, client is %s", peer, conn.LocalAddr())
	}
	if n := h.dials.Load(); n != 1 {
		t.Fatalf("%d dials for one splice", n)
	}
	conn.Close()
	waitFor(t, "spliced upstream closed", func() bool { return bd.openTotal() == 0 })
}
