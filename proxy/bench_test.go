package proxy

import (
	"io"
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
