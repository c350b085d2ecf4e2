package proxy

import (
	"bufio"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
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

// TestECHDenyOption: the strict ech_action deny refuses any hello with
// the extension (rule "ech"), before dialing, and says at start that it
// blocks browsers.
func TestECHDenyOption(t *testing.T) {
	hello := withECH(t, captureHello(t, &tls.Config{ServerName: "good.test"}))
	h, _, err := ReadClientHello(byteReader(hello))
	if err != nil || !h.ECH || h.ServerName != "good.test" {
		t.Fatalf("peek: %+v %v", h, err)
	}
	var logs syncBuffer
	hx := newHarnessOpts(t, harnessOpts{
		cfg:    func(c *Config) { c.DenyTLS = "close"; c.Policy.ECHAction = "deny" },
		logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if s := logs.String(); !strings.Contains(s, "ech_action is deny") || !strings.Contains(s, "Chromium, Edge and Firefox") {
		t.Errorf("no startup warning about browsers: %q", s)
	}
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

// TestECHGreaseDecidedOnOuterSNI: by default a hello carrying the
// extension (what every Chromium and Firefox hello looks like) is decided
// on its SNI like any other: allowed and bumped (the proxy answers with a
// ServerHello), denied by the rules when they say so, and no warning is
// logged.
func TestECHGreaseDecidedOnOuterSNI(t *testing.T) {
	var logs syncBuffer
	hx := newHarnessOpts(t, harnessOpts{
		cfg:    func(c *Config) { c.DenyTLS = "close" },
		logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if s := logs.String(); strings.Contains(s, "ech_action") {
		t.Errorf("default config warns: %q", s)
	}
	for _, tc := range []struct {
		sni, action, rule string
	}{
		{"good.test", "allow", "allow-test"},
		{"blocked.test", "deny", "deny-blocked"},
	} {
		hello := withECH(t, captureHello(t, &tls.Config{ServerName: tc.sni}))
		conn, err := net.Dial("tcp", hx.tlsAddr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(hello)
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		var hdr [5]byte
		_, err = io.ReadFull(conn, hdr[:])
		conn.Close()
		if tc.action == "allow" {
			// A handshake record (ServerHello) from the bump.
			if err != nil || hdr[0] != 22 {
				t.Errorf("%s: want a ServerHello, got % x %v", tc.sni, hdr, err)
			}
		} else if err == nil {
			t.Errorf("%s: denied hello answered % x", tc.sni, hdr)
		}
		hx.rec.wait(t, tc.sni, and(field("sni", tc.sni), field("rule", tc.rule)))
	}
}

// TestRealECHClientRetriesWithRealName: a Go client doing real ECH (inner
// name secret.example, public name public.test) meets the proxy, a server
// without ECH keys. The proxy bumps on the outer name with a leaf valid
// for it; the client treats ECH as rejected (ECHRejectionError, no retry
// configs) and, retrying without ECH, shows its real name, which the
// deny-by-default rules refuse with a 403 page.
func TestRealECHClientRetriesWithRealName(t *testing.T) {
	hx := newHarness(t, nil)
	dial := func(cfg *tls.Config) (*tls.Conn, error) {
		c, err := net.Dial("tcp", hx.tlsAddr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(c, cfg)
		tc.SetDeadline(time.Now().Add(20 * time.Second))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
	_, err := dial(&tls.Config{
		ServerName: "secret.example", RootCAs: hx.clientCA, MinVersion: tls.VersionTLS13,
		EncryptedClientHelloConfigList: echConfigList(t, "public.test"),
	})
	var rej *tls.ECHRejectionError
	if !errors.As(err, &rej) {
		t.Fatalf("ECH handshake through the proxy: %v, want ECHRejectionError", err)
	}
	if len(rej.RetryConfigList) != 0 {
		t.Errorf("retry configs offered: %x", rej.RetryConfigList)
	}
	hx.rec.wait(t, "outer name decided", and(field("sni", "public.test"), field("rule", "allow-test")))

	// The retry without ECH carries the real name.
	tc, err := dial(&tls.Config{ServerName: "secret.example", RootCAs: hx.clientCA})
	if err != nil {
		t.Fatalf("retry without ECH: %v", err)
	}
	defer tc.Close()
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: secret.example\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("real name: status %d, want 403", resp.StatusCode)
	}
	hx.rec.wait(t, "real name denied", and(field("sni", "secret.example"), field("action", "deny"), field("rule", "default")))
}

// echConfigList builds an ECHConfigList (draft-ietf-tls-esni, version
// 0xfe0d) with one config: a fresh X25519 HPKE key, HKDF-SHA256 with
// AES-128-GCM, and publicName.
func echConfigList(t *testing.T, publicName string) []byte {
	t.Helper()
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u16 := func(b []byte, v int) []byte { return append(b, byte(v>>8), byte(v)) }
	pub := key.PublicKey().Bytes()
	var c []byte
	c = append(c, 7)      // config_id
	c = u16(c, 0x0020)    // DHKEM(X25519, HKDF-SHA256)
	c = u16(c, len(pub))  // public_key
	c = append(c, pub...) //
	c = u16(c, 4)         // cipher_suites
	c = u16(c, 0x0001)    // HKDF-SHA256
	c = u16(c, 0x0001)    // AES-128-GCM
	c = append(c, 0)      // maximum_name_length
	c = append(c, byte(len(publicName)))
	c = append(c, publicName...)
	c = u16(c, 0) // extensions
	cfg := u16(u16(nil, 0xfe0d), len(c))
	cfg = append(cfg, c...)
	return append(u16(nil, len(cfg)), cfg...)
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
