package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

func (h *harness) h2Client() *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, h.tlsAddr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: h.clientCA},
		ForceAttemptHTTP2: true,
	}
	return &http.Client{Transport: tr}
}

func TestHTTP2ToClient(t *testing.T) {
	h := newHarness(t, nil)
	c := h.h2Client()
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Post("https://h2.good.test/post", "text/plain", strings.NewReader("twelve bytes"))
			if err != nil {
				t.Error(err)
				return
			}
			body := readAll(t, resp)
			if resp.ProtoMajor != 2 || !strings.Contains(body, "got=12") {
				t.Errorf("proto %s body %q", resp.Proto, body)
			}
		}()
	}
	wg.Wait()
	req, _ := http.NewRequest("GET", "https://h2.good.test/", nil)
	req.Host = "other.test"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != http.StatusMisdirectedRequest || strings.Contains(body, upstreamMarker) {
		t.Fatalf("h2 fronting: %d %q", resp.StatusCode, body)
	}
	r := h.rec.wait(t, "h2 record", and(field("alpn", "h2"), field("method", "POST")))
	if r["status"] != float64(200) || r["bytes_in"] != float64(12) {
		t.Fatalf("%v", r)
	}
}
