package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// withECH appends a syntactically valid outer encrypted_client_hello
// extension (0xfe0d) to a captured single-record ClientHello and fixes the
// three enclosing lengths.
func withECH(t *testing.T, hello []byte) []byte {
	t.Helper()
	rec := append([]byte(nil), hello...)
	if rec[0] != 22 || int(binary.BigEndian.Uint16(rec[3:5]))+5 != len(rec) {
		t.Fatalf("want one handshake record, got %d bytes", len(rec))
	}
	// Outer ECH: type 0, HPKE suite (kdf 1, aead 1), config id, enc, payload.
	body := []byte{0, 0, 1, 0, 1, 7, 0, 32}
	body = append(body, make([]byte, 32)...)
	body = append(body, 0, 64)
	body = append(body, make([]byte, 64)...)
	ext := []byte{0xfe, 0x0d, byte(len(body) >> 8), byte(len(body))}
	ext = append(ext, body...)
	// Locate the extensions length: after version, random, session id,
	// cipher suites and compression methods.
	p := 5 + 4 + 2 + 32
	p += 1 + int(rec[p])
	p += 2 + int(binary.BigEndian.Uint16(rec[p:]))
	p += 1 + int(rec[p])
	extLen := int(binary.BigEndian.Uint16(rec[p:]))
	binary.BigEndian.PutUint16(rec[p:], uint16(extLen+len(ext)))
	rec = append(rec, ext...)
	hsLen := len(rec) - 9
	rec[6], rec[7], rec[8] = byte(hsLen>>16), byte(hsLen>>8), byte(hsLen)
	binary.BigEndian.PutUint16(rec[3:5], uint16(len(rec)-5))
	return rec
}

func TestECHFailsClosed(t *testing.T) {
	hello := withECH(t, captureHello(t, &tls.Config{ServerName: "good.test"}))
	h, _, err := ReadClientHello(byteReader(hello))
	if err != nil || !h.ECH || h.ServerName != "good.test" {
		t.Fatalf("peek: %+v %v", h, err)
	}
	hx := newHarness(t, func(c *Config) { c.DenyTLS = "close" })
	conn, err := net.Dial("tcp", hx.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(hello)
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil || len(b) != 0 {
		t.Fatalf("want close, got %q %v", b, err)
	}
	hx.rec.wait(t, "ech deny", and(field("rule", "ech"), field("action", "deny"), field("sni", "good.test")))
	if hx.dials.Load() != 0 {
		t.Fatal("ECH hello dialed upstream")
	}
}

func TestHealthReportsDeadListener(t *testing.T) {
	h := newHarness(t, nil)
	if err := h.p.Health(); err != nil {
		t.Fatal(err)
	}
	h.httpL.Close() // not via Shutdown: a listener failure
	deadline := time.Now().Add(20 * time.Second)
	for h.p.Health() == nil {
		if time.Now().After(deadline) {
			t.Fatal("Health still nil after listener failure")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
