package e2e

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// TestDestinationBinding runs the demo's deny-by-default policy through
// the whole GWLB path with binding on (the default) against the
// topology's DNS server: names allowed or spliced by policy pass only to
// addresses they resolve to; the servers at other addresses receive
// nothing; rotating answers stay allowed within the retain window; a dead
// resolver denies fast without holding up other connections.
func TestDestinationBinding(t *testing.T) { bindingSuite(t, steer.EgressNAT, true) }

// TestDestinationBindingTunnel: the spoofed Host and SNI cases in one-arm
// (tunnel) mode, where upstream connections go back through the tunnel.
func TestDestinationBindingTunnel(t *testing.T) { bindingSuite(t, steer.EgressTunnel, false) }

func bindingSuite(t *testing.T, mode string, full bool) {
	e := newEnv(t, mode, func(c *config.Config) {
		b := &c.Proxy.Binding.Resolver
		b.Timeout = 3 * time.Second
		b.FailureTTL = 30 * time.Second
		b.MinTTL = time.Second
		b.Retain = 5 * time.Second
		b.RequeryInterval = 0
	}, false)
	ctx := testCtx(t, 3*time.Minute)
	cl := e.Clients[0]
	hc := cl.HTTPClient(false)
	in := e.Net.Internet

	// get sends GET / to dst with Host host.
	get := func(dst netip.Addr, host string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+dst.String()+"/", nil)
		req.Host = host
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s Host %s: %v", dst, host, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	record := func(what string, match func(*demo.Record) bool) demo.Record {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		rs, err := e.Records.Wait(wctx, 1, match)
		if err != nil {
			t.Fatalf("%s: no record: %v", what, err)
		}
		return rs[len(rs)-1]
	}

	t.Run("http", func(t *testing.T) {
		if s, body := get(demo.AddrApp, demo.HostApp); s != 200 || !strings.Contains(body, "hello from") {
			t.Fatalf("allowed Host to its own address: %d %q", s, body)
		}
		r := record("bound", func(r *demo.Record) bool { return r.Host == demo.HostApp && r.Scheme == "http" && r.Bind == "match" })
		if r.Action != "allow" || r.BindName != demo.HostApp {
			t.Fatalf("bound record: %s", r.Raw)
		}
		before := in.Accepted(demo.AddrBlocked)
		s, body := get(demo.AddrBlocked, demo.HostApp)
		if s != 403 || !strings.Contains(body, "bind:dst-mismatch") {
			t.Fatalf("allowed Host to another address: %d %q", s, body)
		}
		r = record("mismatch", func(r *demo.Record) bool {
			return r.Host == demo.HostApp && r.DstIP == demo.AddrBlocked.String() && r.Rule == "bind:dst-mismatch"
		})
		if r.Action != "deny" || r.Bind != "mismatch" || r.BindAnswers != demo.AddrApp.String() || r.Status != 403 {
			t.Fatalf("mismatch record: %s", r.Raw)
		}
		if n := in.Accepted(demo.AddrBlocked) - before; n != 0 {
			t.Fatalf("the server at %s accepted %d connections for a spoofed Host", demo.AddrBlocked, n)
		}
	})

	t.Run("splice", func(t *testing.T) {
		roots, err := demo.Roots(e.Files.InternetCA) // the internet only: a bump would fail
		if err != nil {
			t.Fatal(err)
		}
		dial := func(dst netip.Addr) (*tls.Conn, error) {
			raw, err := cl.Dial(ctx, "tcp", netip.AddrPortFrom(dst, 443).String())
			if err != nil {
				return nil, err
			}
			tc := tls.Client(raw, &tls.Config{ServerName: demo.HostBank, RootCAs: roots})
			hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := tc.HandshakeContext(hctx); err != nil {
				raw.Close()
				return nil, err
			}
			return tc, nil
		}
		tc, err := dial(demo.AddrBank)
		if err != nil {
			t.Fatalf("spliced SNI to its own address: %v", err)
		}
		if is := tc.ConnectionState().PeerCertificates[0].Issuer.CommonName; is != demo.InternetCAName {
			t.Fatalf("spliced connection shows issuer %q", is)
		}
		tc.Close()
		record("splice", func(r *demo.Record) bool {
			return r.SNI == demo.HostBank && r.Action == "splice" && r.Bind == "match" && r.DstIP == demo.AddrBank.String()
		})
		before := in.Accepted(demo.AddrApp)
		if tc, err := dial(demo.AddrApp); err == nil {
			tc.Close()
			t.Fatal("spliced SNI to another address: handshake succeeded with the internet's roots")
		}
		r := record("splice mismatch", func(r *demo.Record) bool {
			return r.SNI == demo.HostBank && r.DstIP == demo.AddrApp.String() && r.Rule == "bind:dst-mismatch"
		})
		if r.Action != "deny" || r.BindAnswers != demo.AddrBank.String() {
			t.Fatalf("splice mismatch record: %s", r.Raw)
		}
		if n := in.Accepted(demo.AddrApp) - before; n != 0 {
			t.Fatalf("the server at %s accepted %d connections for a spoofed SNI", demo.AddrApp, n)
		}
	})

	if !full {
		return
	}
	t.Run("rotation", func(t *testing.T) {
		const name = "rotating.demo.test" // allowed by *.demo.test
		e.Net.DNS.Set(name, 1, demo.AddrApp)
		if s, _ := get(demo.AddrApp, name); s != 200 {
			t.Fatalf("first answer: %d", s)
		}
		// The answer rotates to another address (TTL 1 s).
		e.Net.DNS.Set(name, 1, demo.AddrExpired)
		time.Sleep(1200 * time.Millisecond)
		if s, _ := get(demo.AddrExpired, name); s != 200 {
			t.Fatalf("new answer: %d", s)
		}
		// A client that resolved earlier still uses the old address: allowed
		// within the retain window.
		if s, _ := get(demo.AddrApp, name); s != 200 {
			t.Fatalf("old answer within the window: %d", s)
		}
		// After the window it is not an address of the name any more.
		time.Sleep(6500 * time.Millisecond)
		if s, _ := get(demo.AddrApp, name); s != 403 {
			t.Fatalf("old answer after the window: %d", s)
		}
	})

	t.Run("resolver-down", func(t *testing.T) {
		// app.demo.test is cached (TTL 60 s); echo.demo.test never asked.
		if s, _ := get(demo.AddrApp, demo.HostApp); s != 200 {
			t.Fatalf("warm-up: %d", s)
		}
		e.Net.DNS.Silent(true)
		defer e.Net.DNS.Silent(false)
		type res struct {
			status int
			took   time.Duration
		}
		done := make(chan res, 1)
		go func() {
			start := time.Now()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+demo.AddrEcho.String()+"/", nil)
			req.Host = demo.HostEcho
			resp, err := cl.HTTPClient(false).Do(req)
			if err != nil {
				done <- res{-1, time.Since(start)}
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			done <- res{resp.StatusCode, time.Since(start)}
		}()
		time.Sleep(100 * time.Millisecond) // the lookup is now pending
		start := time.Now()
		if s, _ := get(demo.AddrApp, demo.HostApp); s != 200 {
			t.Fatalf("cached name while the resolver is down: %d", s)
		}
		if d := time.Since(start); d > 2*time.Second { // the dead lookup takes 3 s
			t.Fatalf("another connection waited %v behind a dead resolver", d)
		}
		r := <-done
		if r.status != 403 || r.took > 6*time.Second {
			t.Fatalf("uncached name with the resolver down: %d after %v", r.status, r.took)
		}
		rec := record("resolve failed", func(r *demo.Record) bool {
			return r.Host == demo.HostEcho && r.Rule == "bind:resolve-failed"
		})
		if rec.Action != "deny" {
			t.Fatalf("resolve failed record: %s", rec.Raw)
		}
		// Cached failure: the next one is immediate.
		start = time.Now()
		if s, _ := get(demo.AddrEcho, demo.HostEcho); s != 403 || time.Since(start) > 2*time.Second {
			t.Fatalf("second uncached request: %d after %v", s, time.Since(start))
		}
	})
}
