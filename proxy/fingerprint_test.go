package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/tlsfp"
)

// TestRecordFingerprints: bumped and spliced TLS records carry the JA4 and
// JA3 of the client's hello; plain HTTP records carry empty ones.
func TestRecordFingerprints(t *testing.T) {
	h := newHarness(t, nil)
	want := func(cfg *tls.Config) (string, string) {
		var f tlsfp.Fingerprint
		if err := f.Compute(captureHello(t, cfg.Clone())); err != nil {
			t.Fatal(err)
		}
		return f.JA4(), f.JA3()
	}
	for _, tc := range []struct {
		name, sni, action string
		pool              *x509CertPool
	}{
		{"bump", "good.test", "allow", h.clientCA},
		{"splice", "splice.test", "splice", h.upCA.pool()},
	} {
		cfg := &tls.Config{ServerName: tc.sni, RootCAs: tc.pool, NextProtos: []string{"http/1.1"}}
		ja4, ja3 := want(cfg)
		conn, err := tls.Dial("tcp", h.tlsAddr, cfg)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		fmt.Fprintf(conn, "GET /fp HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tc.sni)
		b, _ := io.ReadAll(conn)
		conn.Close()
		if !bytes.Contains(b, []byte(upstreamMarker)) {
			t.Fatalf("%s: response %q", tc.name, b)
		}
		r := h.rec.wait(t, tc.name+" record", and(field("sni", tc.sni), field("action", tc.action)))
		if r["ja4"] != ja4 || r["ja3"] != ja3 || len(ja4) != tlsfp.JA4Len {
			t.Errorf("%s: record ja4 %v ja3 %v, want %s %s", tc.name, r["ja4"], r["ja3"], ja4, ja3)
		}
		if ja4[:4] != "t13d" || ja4[8:10] != "h1" {
			t.Errorf("%s: ja4 %s, want t13d....h1", tc.name, ja4)
		}
	}
	resp, _ := mustGet(t, h.httpClient(false), "http://good.test/plain")
	resp.Body.Close()
	r := h.rec.wait(t, "plain record", and(field("scheme", "http"), field("host", "good.test")))
	if r["ja4"] != "" || r["ja3"] != "" {
		t.Errorf("plain HTTP record has fingerprints %v %v", r["ja4"], r["ja3"])
	}
}
