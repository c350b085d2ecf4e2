package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// Issue 14 items 3 and 4 through the whole GWLB path: the real daemon
// behind the simulator, the demo's deny-by-default policy.

const e2eProgress = 2 * time.Second

// dialFrom connects from c's namespace, from local address src when
// valid, with control applied to the socket (nil: none).
func dialFrom(ctx context.Context, c *demo.Client, src netip.Addr, dst netip.AddrPort, control func(string, string, syscall.RawConn) error) (net.Conn, error) {
	d := net.Dialer{Control: control}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	var conn net.Conn
	err := c.NS.Do(func() error {
		var err error
		conn, err = d.DialContext(ctx, "tcp4", dst.String())
		return err
	})
	return conn, err
}

// smallRcvBuf keeps a client's receive buffer small so that a client that
// does not read fills the path quickly.
func smallRcvBuf(_, _ string, rc syscall.RawConn) error {
	return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
}

// bumped wraps raw in a client TLS connection to name (HTTP/1.1 only) and
// completes the handshake.
func bumped(ctx context.Context, c *demo.Client, raw net.Conn, name string) (*tls.Conn, error) {
	tc := tls.Client(raw, &tls.Config{ServerName: name, RootCAs: c.Roots, NextProtos: []string{"http/1.1"}})
	hctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, err
	}
	return tc, nil
}

// closedBy reads c until the peer closes it (EOF or reset) and fails the
// test when it is still open after d.
func closedBy(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", d)
	}
}

// metric scrapes one metric of the appliance (0 when not exposed).
func metric(t *testing.T, ctx context.Context, e *demo.Env, name string) float64 {
	t.Helper()
	m, err := e.Metrics(ctx)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	return m[name]
}

// waitIdle waits until the appliance has no client connection open.
func waitIdle(t *testing.T, ctx context.Context, e *demo.Env) {
	t.Helper()
	waitFor(t, 60*time.Second, "no active proxy connection", func() (bool, string) {
		m, err := e.Metrics(ctx)
		if err != nil {
			return false, err.Error()
		}
		v := m["gwlbproxy_proxy_active_connections"]
		return v == 0, fmt.Sprintf("active %v", v)
	})
}

// getOn sends GET path with Host host on an open HTTP/1.1 connection and
// reads the whole answer (keep-alive: the connection stays open).
func getOn(c net.Conn, br *bufio.Reader, host, path string) (int, string, error) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: gwlbproxy-e2e\r\n\r\n", path, host); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), err
}

// TestFairShareThroughTunnel (issue 14 item 3), nat mode, records at the
// CloudWatch Logs fake, progress_timeout 2s and max_conns_per_client 4:
//   - a client that sends headers and part of a body, then stops, is cut
//     at the progress timeout over plain HTTP and bumped HTTPS; its record
//     says stalled client_send;
//   - a client that asks for a large body and reads nothing is cut; its
//     record says stalled client_read;
//   - the slots are freed (no connection left, a new request works);
//   - a client address at its cap gets a 503 page (plain HTTP) or a clean
//     close (TLS) and a limit:max_conns_per_client record, while another
//     client address in the same VPC, and the same address in another
//     VPC (overlapping VPCs behind one GWLB), are served.
func TestFairShareThroughTunnel(t *testing.T) {
	const perClient = 4
	e := newEnv(t, steer.EgressNAT, func(c *config.Config) {
		c.Proxy.ProgressTimeout = e2eProgress
		c.Proxy.MaxConnsPerClient = perClient
	}, true)
	ctx := testCtx(t, 4*time.Minute)
	cl := e.Clients[0]
	http80 := netip.AddrPortFrom(demo.AddrApp, 80)
	https := netip.AddrPortFrom(demo.AddrApp, 443)

	record := func(what string, match func(*demo.Record) bool) demo.Record {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		rs, err := e.Records.Wait(wctx, 1, match)
		if err != nil {
			t.Fatalf("%s: no record: %v", what, err)
		}
		return rs[len(rs)-1]
	}
	portOf := func(c net.Conn) int { return c.LocalAddr().(*net.TCPAddr).Port }
	served := func(what string) {
		t.Helper()
		if r := cl.Get(ctx, "https://"+demo.HostApp+"/"); r.Err != nil || r.Status != 200 {
			t.Fatalf("%s: a new connection: %v %d", what, r.Err, r.Status)
		}
	}

	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprint("slow-body/tls=", tlsOn), func(t *testing.T) {
			dst := http80
			if tlsOn {
				dst = https
			}
			raw, err := dialFrom(ctx, cl, netip.Addr{}, dst, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			c := net.Conn(raw)
			if tlsOn {
				if c, err = bumped(ctx, cl, raw, demo.HostApp); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: "+demo.HostApp+"\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n0123456789"); err != nil {
				t.Fatal(err)
			}
			closedBy(t, c, 30*time.Second)
			if el := time.Since(start); el < e2eProgress-100*time.Millisecond {
				t.Fatalf("cut after %v, before the progress timeout %v", el, e2eProgress)
			} else {
				t.Logf("cut after %v", el)
			}
			port := portOf(raw)
			r := record("slow body", func(r *demo.Record) bool { return r.ClientPort == port && hasField(r, "stalled") })
			if r.Field("stalled") != "client_send" || r.Action != "error" || r.Host != demo.HostApp || r.ClientIP != gwlbsim.ClientAddr.String() {
				t.Fatalf("slow body record: %s", r.Raw)
			}
		})
	}
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprint("slow-reader/tls=", tlsOn), func(t *testing.T) {
			dst := http80
			if tlsOn {
				dst = https
			}
			raw, err := dialFrom(ctx, cl, netip.Addr{}, dst, smallRcvBuf)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			c := net.Conn(raw)
			if tlsOn {
				if c, err = bumped(ctx, cl, raw, demo.HostApp); err != nil {
					t.Fatal(err)
				}
			}
			const size = 1 << 30
			if _, err := fmt.Fprintf(c, "GET /bytes?n=%d HTTP/1.1\r\nHost: %s\r\n\r\n", size, demo.HostApp); err != nil {
				t.Fatal(err)
			}
			var b [1024]byte // the first bytes, then nothing
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadFull(c, b[:]); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b[:]), "HTTP/1.1 200") {
				t.Fatalf("answer starts %q", b[:40])
			}
			port := portOf(raw)
			r := record("slow reader", func(r *demo.Record) bool { return r.ClientPort == port && hasField(r, "stalled") })
			if r.Field("stalled") != "client_read" || r.Action != "error" || r.Status != 200 {
				t.Fatalf("slow reader record: %s", r.Raw)
			}
			if r.BytesOut <= 0 || r.BytesOut >= size {
				t.Fatalf("bytes_out %d of %d: %s", r.BytesOut, size, r.Raw)
			}
			// What was in flight drains, then the connection is closed.
			closedBy(t, c, 30*time.Second)
		})
	}

	t.Run("slots-freed", func(t *testing.T) {
		waitIdle(t, ctx, e)
		served("after the stalls")
		m, err := e.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		send, read := m[`gwlbproxy_proxy_stalled_total{side="client_send"}`], m[`gwlbproxy_proxy_stalled_total{side="client_read"}`]
		if send < 2 || read < 2 {
			t.Fatalf("stalled counters: client_send %v, client_read %v; want >= 2 each", send, read)
		}
	})

	t.Run("per-client-cap", func(t *testing.T) {
		// A second address for the client of VPC A, on its link to the
		// VPC (same subnet: the VPC routes it back).
		other := gwlbsim.ClientAddr.Next()
		link, err := cl.NS.Netlink().LinkByName("c0")
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.NS.Netlink().AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: other.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		limited0 := metric(t, ctx, e, "gwlbproxy_proxy_connections_client_limited_total")

		// The capped client: perClient keep-alive connections, each with
		// one request answered, held open.
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for i := range perClient {
			c, err := dialFrom(ctx, cl, netip.Addr{}, http80, nil)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
			if s, body, err := getOn(c, bufio.NewReader(c), demo.HostApp, "/"); err != nil || s != 200 {
				t.Fatalf("held connection %d: %d %q %v", i, s, body, err)
			}
		}
		// One more from the same address: 503 page, closed.
		c, err := dialFrom(ctx, cl, netip.Addr{}, http80, nil)
		if err != nil {
			t.Fatal(err)
		}
		port := portOf(c)
		s, body, err := getOn(c, bufio.NewReader(c), demo.HostApp, "/")
		if s != 503 || !strings.Contains(body, "per-client connection limit") {
			t.Fatalf("connection over the cap: %d %q %v", s, body, err)
		}
		closedBy(t, c, 10*time.Second)
		c.Close()
		r := record("refused", func(r *demo.Record) bool { return r.ClientPort == port && r.Rule == "limit:max_conns_per_client" })
		if r.Status != 503 || r.Action != "error" || r.ClientIP != gwlbsim.ClientAddr.String() || r.EndpointID != demo.EndpointOf(demo.EndpointA) {
			t.Fatalf("refusal record: %s", r.Raw)
		}
		// Over TLS: a clean close, no handshake.
		if raw, err := dialFrom(ctx, cl, netip.Addr{}, https, nil); err != nil {
			t.Fatal(err)
		} else {
			tc, err := bumped(ctx, cl, raw, demo.HostApp)
			if err == nil {
				tc.Close()
				t.Fatal("TLS connection over the cap completed its handshake")
			}
			t.Logf("TLS over the cap: %v", err)
			raw.Close()
		}
		if d := metric(t, ctx, e, "gwlbproxy_proxy_connections_client_limited_total") - limited0; d < 2 {
			t.Fatalf("client_limited counter grew by %v, want >= 2", d)
		}

		// Another address of the same VPC is not held up.
		for _, tlsOn := range []bool{false, true} {
			dst := http80
			if tlsOn {
				dst = https
			}
			c, err := dialFrom(ctx, cl, other, dst, nil)
			if err != nil {
				t.Fatalf("from %s: %v", other, err)
			}
			conn := c
			if tlsOn {
				if conn, err = bumped(ctx, cl, c, demo.HostApp); err != nil {
					t.Fatalf("TLS from %s: %v", other, err)
				}
			}
			s, body, err := getOn(conn, bufio.NewReader(conn), demo.HostApp, "/")
			conn.Close()
			if err != nil || s != 200 || !strings.Contains(body, "you came from") {
				t.Fatalf("from %s (tls=%v) while %s is at its cap: %d %q %v", other, tlsOn, gwlbsim.ClientAddr, s, body, err)
			}
		}
		// The same address in VPC B is another client (overlapping VPCs).
		if r := e.Clients[1].Get(ctx, "https://"+demo.HostApp+"/"); r.Err != nil || r.Status != 200 {
			t.Fatalf("VPC B's %s while VPC A's is at its cap: %v %d %q", gwlbsim.ClientAddr, r.Err, r.Status, r.Body)
		}
		// Releasing one held connection gives the capped client a slot.
		held[0].Close()
		held = held[1:]
		waitFor(t, 30*time.Second, "a slot for the capped client", func() (bool, string) {
			r := cl.Get(ctx, "http://"+demo.HostApp+"/")
			return r.Err == nil && r.Status == 200, fmt.Sprintf("%v %d", r.Err, r.Status)
		})
	})
	checkAllRecords(t, e)
}

// hasField reports whether record r has field k with a value other than
// the empty string.
func hasField(r *demo.Record, k string) bool {
	v := r.Field(k)
	return v != "" && v != "?"+k
}

// fdCount counts the open file descriptors of process pid.
func fdCount(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}

// TestIdleBumpedConnsThroughTunnel (issue 14 item 4): hundreds of idle
// bumped keep-alive connections (one request each) held through the
// tunnel cost the daemon about one goroutine and one descriptor each (no
// upstream connection or reader per idle client), and when the clients
// close them goroutines and descriptors return to where they were.
func TestIdleBumpedConnsThroughTunnel(t *testing.T) {
	n := 600
	if testing.Short() {
		n = 200
	}
	e := newEnv(t, steer.EgressNAT, func(c *config.Config) {
		c.Proxy.MaxConnsPerClient = 4 * n
		// Pooled upstream connections are not the clients': let them go
		// quickly so that the baseline and the end have none.
		c.Proxy.UpstreamIdleTimeout = 2 * time.Second
	}, false)
	ctx := testCtx(t, 4*time.Minute)
	cl := e.Clients[0]
	pid := e.App.PID()
	https := netip.AddrPortFrom(demo.AddrApp, 443)

	open := func(k int) []net.Conn {
		t.Helper()
		conns := make([]net.Conn, k)
		errs := make(chan error, k)
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		for i := range conns {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				raw, err := dialFrom(ctx, cl, netip.Addr{}, https, nil)
				if err != nil {
					errs <- err
					return
				}
				c, err := bumped(ctx, cl, raw, demo.HostApp)
				if err != nil {
					errs <- err
					return
				}
				s, body, err := getOn(c, bufio.NewReaderSize(c, 512), demo.HostApp, "/")
				if err == nil && s != 200 {
					err = fmt.Errorf("status %d: %q", s, body)
				}
				if err != nil {
					c.Close()
					errs <- err
					return
				}
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
			t.Fatalf("opening idle connections: %v", err)
		}
		return conns
	}
	closeAll := func(cs []net.Conn) {
		for _, c := range cs {
			c.Close()
		}
	}
	measure := func() (g float64, fds int) {
		t.Helper()
		g = metric(t, ctx, e, "go_goroutines")
		fds, err := fdCount(pid)
		if err != nil {
			t.Fatal(err)
		}
		return g, fds
	}

	// Warm up (pooled upstream connection, leaf cache), then the baseline.
	closeAll(open(8))
	waitIdle(t, ctx, e)
	time.Sleep(4 * time.Second) // upstream_idle_timeout
	g0, fd0 := measure()

	conns := open(n)
	defer closeAll(conns)
	waitFor(t, 30*time.Second, "every idle connection active", func() (bool, string) {
		v := metric(t, ctx, e, "gwlbproxy_proxy_active_connections")
		return int(v) == n, fmt.Sprintf("active %v of %d", v, n)
	})
	time.Sleep(time.Second) // handshakes' helpers gone
	g1, fd1 := measure()
	perG, perFD := (g1-g0)/float64(n), float64(fd1-fd0)/float64(n)
	_, rss, _ := e.App.MemoryHWM()
	t.Logf("%d idle bumped connections through the tunnel: daemon goroutines %v -> %v (%.2f each), fds %d -> %d (%.2f each), RSS now %d MiB",
		n, g0, g1, perG, fd0, fd1, perFD, rss>>20)
	// One serving goroutine and the accepted socket per idle client; the
	// upstream connections stay pooled. Slack: pool and timers.
	slack := 32 / float64(n)
	if perG > 1+slack || perFD > 1+slack {
		t.Errorf("per idle connection: %.2f goroutines (want <= 1), %.2f fds (want <= 1)", perG, perFD)
	}
	// Still usable: a request on a connection idle all this time.
	if s, _, err := getOn(conns[0], bufio.NewReaderSize(conns[0], 512), demo.HostApp, "/"); err != nil || s != 200 {
		t.Fatalf("request on a held connection: %d %v", s, err)
	}

	closeAll(conns)
	waitIdle(t, ctx, e)
	waitFor(t, 60*time.Second, "goroutines and fds back to the baseline", func() (bool, string) {
		g, fds := measure()
		// Back to the baseline: a few for the scrape itself and timers.
		return g <= g0+4 && fds <= fd0+4, fmt.Sprintf("goroutines %v (baseline %v), fds %d (baseline %d)", g, g0, fds, fd0)
	})
	g2, fd2 := measure()
	t.Logf("released: goroutines %v, fds %d", g2, fd2)
}
