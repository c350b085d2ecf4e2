package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// TestUpstreamHTTP2: with http2 on, bumped requests reach an upstream that
// offers h2 over h2, verified, and requests from many client connections
// share one multiplexed upstream connection. Plain HTTP stays HTTP/1.1.
func TestUpstreamHTTP2(t *testing.T) {
	h := newHarness(t, nil)
	resp, body := mustGet(t, h.httpsClient(false), "https://h2up.good.test/first")
	if resp.StatusCode != 200 || resp.Header.Get("X-Upstream-Proto") != "HTTP/2.0" || !strings.Contains(body, "host=h2up.good.test") {
		t.Fatalf("first: %d %q %q", resp.StatusCode, resp.Header.Get("X-Upstream-Proto"), body)
	}
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := h.httpsClient(false) // a new client connection per request
			resp, err := c.Post("https://h2up.good.test/post", "text/plain", strings.NewReader(fmt.Sprintf("body %02d", i)))
			if err != nil {
				t.Error(err)
				return
			}
			if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "got=7") {
				t.Errorf("POST %d: %d %q", i, resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	if n := h.dials.Load(); n != 1 {
		t.Fatalf("%d upstream dials for 17 requests from 17 client connections; h2 should multiplex them on 1", n)
	}
	resp, _ = mustGet(t, h.httpClient(false), "http://plain.good.test/")
	if p := resp.Header.Get("X-Upstream-Proto"); p != "HTTP/1.1" {
		t.Fatalf("plain http upstream spoke %s", p)
	}
	r := h.rec.wait(t, "h2 upstream POST", and(field("method", "POST"), field("host", "h2up.good.test")))
	if r["status"] != float64(200) || r["bytes_in"] != float64(7) || r["action"] != "allow" {
		t.Fatalf("record %v", r)
	}
}

// TestUpstreamHTTP2Off: http2 off (and per-client mode, tested in
// TestUpstreamPerClient) keeps the upstream on HTTP/1.1.
func TestUpstreamHTTP2Off(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.HTTP2 = false })
	resp, _ := mustGet(t, h.httpsClient(true), "https://h1.good.test/")
	if p := resp.Header.Get("X-Upstream-Proto"); resp.StatusCode != 200 || p != "HTTP/1.1" {
		t.Fatalf("%d upstream proto %s with http2 off", resp.StatusCode, p)
	}
}

// TestUpstreamHTTP2WebSocket: an upgrade request goes over HTTP/1.1 even
// when the pooled connection (or the pre-verified one) speaks h2.
func TestUpstreamHTTP2WebSocket(t *testing.T) {
	h := newHarness(t, nil)
	mustGet(t, h.httpsClient(false), "https://ws.good.test/warm") // h2 connection pooled
	req, _ := http.NewRequest("GET", "https://ws.good.test/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Origin", "https://ws.good.test")
	resp, err := h.httpsClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade over h2-capable pool: %d", resp.StatusCode)
	}
}
