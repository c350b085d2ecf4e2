package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// benchGets runs GETs through the proxy from parallel clients and reports
// requests per second. Everything (client, proxy, upstream) shares the
// machine, so figures are an upper bound on proxy overhead per request, not
// a capacity claim.
func benchGets(b *testing.B, url string, mk func() *http.Client) {
	b.ReportAllocs()
	start := time.Now()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		c := mk()
		for pb.Next() {
			resp, err := c.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
		c.CloseIdleConnections()
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}

func BenchmarkHTTPSNewConnection(b *testing.B) {
	h := newHarness(b, nil)
	benchGets(b, "https://bench.good.test/", func() *http.Client { return h.httpsClient(false) })
}

func BenchmarkHTTPSKeepAlive(b *testing.B) {
	h := newHarness(b, nil)
	benchGets(b, "https://bench.good.test/", func() *http.Client { return h.httpsClient(true) })
}

func BenchmarkHTTPNewConnection(b *testing.B) {
	h := newHarness(b, nil)
	benchGets(b, "http://bench.good.test/", func() *http.Client { return h.httpClient(false) })
}

func BenchmarkHTTPKeepAlive(b *testing.B) {
	h := newHarness(b, nil)
	benchGets(b, "http://bench.good.test/", func() *http.Client { return h.httpClient(true) })
}

func BenchmarkHTTPSKeepAliveH2(b *testing.B) {
	h := newHarness(b, nil)
	benchGets(b, "https://bench.good.test/", func() *http.Client { return h.h2Client() })
}

// BenchmarkHTTPSKeepAliveUpstreamH1 is BenchmarkHTTPSKeepAlive with http2
// off: the upstream side speaks HTTP/1.1 from a pool of connections.
func BenchmarkHTTPSKeepAliveUpstreamH1(b *testing.B) {
	h := newHarness(b, func(c *Config) { c.HTTP2 = false })
	benchGets(b, "https://bench.good.test/", func() *http.Client { return h.httpsClient(true) })
}

// Per-client mode (one-arm): every client connection dials its own
// upstream bound to the client's address (loopback stand-in for steer's
// tunnel-mode dialer), so new connections cost an upstream handshake each.
// Client sockets take a private loopback address (privateLoopback): on
// 127.0.0.1 the bind of the upstream socket to the client's port collided
// with other connections' ephemeral ports on a busy machine (EADDRINUSE,
// answered 502, which failed the benchmark).
func perClientClient(h *harness, keepAlive bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: privateLoopback(), Control: reuseAddr}
			return d.DialContext(ctx, network, h.tlsAddr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: h.clientCA},
		DisableKeepAlives: !keepAlive,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func BenchmarkHTTPSNewConnectionPerClient(b *testing.B) {
	h, _ := perClientHarness(b)
	benchGets(b, "https://bench.good.test/", func() *http.Client { return perClientClient(h, false) })
}

func BenchmarkHTTPSKeepAlivePerClient(b *testing.B) {
	h, _ := perClientHarness(b)
	benchGets(b, "https://bench.good.test/", func() *http.Client { return perClientClient(h, true) })
}
