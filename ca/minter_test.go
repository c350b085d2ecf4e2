package ca

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMintVerifiesAgainstRoot(t *testing.T) {
	a, _ := newFileCA(t, InitOptions{})
	m := NewMinter(a, MinterOptions{}, nil)
	start := time.Now()
	c, err := m.Certificate(context.Background(), "WWW.Example.COM.", netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	roots := rootPool(a.Certificate())
	if err := verifyLeaf(c.Certificate[0], c.Certificate[1:], roots, "www.example.com", time.Now()); err != nil {
		t.Fatalf("leaf does not verify for its name: %v", err)
	}
	if err := verifyLeaf(c.Certificate[0], c.Certificate[1:], roots, "other.example.com", time.Now()); err == nil {
		t.Fatal("leaf verifies for another name")
	}
	leaf := c.Leaf
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Errorf("leaf CA flags: isCA=%v bc=%v", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("EKU %v", leaf.ExtKeyUsage)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "www.example.com" || len(leaf.IPAddresses) != 0 {
		t.Errorf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if d := leaf.NotAfter.Sub(start); d < 47*time.Hour || d > 49*time.Hour {
		t.Errorf("NotAfter in %v, want ~48h", d)
	}
	if d := start.Sub(leaf.NotBefore); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("NotBefore %v ago, want ~1h", d)
	}
	if leaf.SerialNumber.BitLen() < 100 {
		t.Errorf("serial %v suspiciously short", leaf.SerialNumber)
	}
	if !leaf.PublicKey.(crypto.PublicKey).(interface{ Equal(crypto.PublicKey) bool }).Equal(c.PrivateKey.(crypto.Signer).Public()) {
		t.Error("leaf key does not match certificate")
	}
	// A leaf cannot act as a CA: a certificate it signs must not verify.
	sub := &x509.Certificate{SerialNumber: leaf.SerialNumber, DNSNames: []string{"evil.example"}, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}
	der, err := x509.CreateCertificate(nil, sub, leaf, leaf.PublicKey, c.PrivateKey)
	if err == nil {
		inter := append([][]byte{c.Certificate[0]}, c.Certificate[1:]...)
		if verifyLeaf(der, inter, roots, "evil.example", time.Now()) == nil {
			t.Fatal("certificate signed by a leaf verifies")
		}
	}
}

func TestMintIPSAN(t *testing.T) {
	a, _ := newFileCA(t, InitOptions{})
	m := NewMinter(a, MinterOptions{}, nil)
	roots := rootPool(a.Certificate())
	for _, tc := range []struct {
		sni  string
		ip   netip.Addr
		want string
	}{
		{"", netip.MustParseAddr("203.0.113.7"), "203.0.113.7"},
		{"", netip.MustParseAddr("::ffff:203.0.113.8"), "203.0.113.8"},
		{"", netip.MustParseAddr("2001:db8::1"), "2001:db8::1"},
		{"198.18.0.9", netip.MustParseAddr("203.0.113.7"), "198.18.0.9"}, // IP literal in SNI
	} {
		c, err := m.Certificate(context.Background(), tc.sni, tc.ip)
		if err != nil {
			t.Fatalf("%q/%v: %v", tc.sni, tc.ip, err)
		}
		if len(c.Leaf.DNSNames) != 0 || len(c.Leaf.IPAddresses) != 1 {
			t.Fatalf("%q/%v: SANs %v %v", tc.sni, tc.ip, c.Leaf.DNSNames, c.Leaf.IPAddresses)
		}
		if err := verifyLeaf(c.Certificate[0], nil, roots, tc.want, time.Now()); err != nil {
			t.Errorf("%q/%v: verify for %s: %v", tc.sni, tc.ip, tc.want, err)
		}
		if verifyLeaf(c.Certificate[0], nil, roots, "203.0.113.99", time.Now()) == nil {
			t.Errorf("%q/%v: verifies for another IP", tc.sni, tc.ip)
		}
	}
	if _, err := m.Certificate(context.Background(), "", netip.Addr{}); !errors.Is(err, ErrInvalidName) {
		t.Errorf("no SNI, no IP: %v", err)
	}
}

// TestTLSHandshake runs a real TLS 1.3 handshake with GetCertificate over
// loopback: the server sends the minted chain and a client trusting only
// the root accepts it for the SNI it sent.
func TestTLSHandshake(t *testing.T) {
	a, _ := newFileCA(t, InitOptions{})
	m := NewMinter(a, MinterOptions{}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s := tls.Server(c, &tls.Config{GetCertificate: m.GetCertificate})
				if s.Handshake() == nil {
					io.WriteString(s, "ok")
				}
			}()
		}
	}()
	for _, tc := range []struct{ sni, verifyAs string }{{"shop.example.net", "shop.example.net"}, {"", "127.0.0.1"}} {
		cfg := &tls.Config{RootCAs: rootPool(a.Certificate()), ServerName: tc.sni}
		if tc.sni == "" {
			// No SNI on the wire: verify by hand against the IP the
			// server should have used.
			cfg.InsecureSkipVerify = true
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: tc.verifyAs, Roots: cfg.RootCAs})
				return err
			}
		}
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			t.Fatalf("sni %q: %v", tc.sni, err)
		}
		b, _ := io.ReadAll(c)
		c.Close()
		if string(b) != "ok" {
			t.Errorf("sni %q: got %q", tc.sni, b)
		}
	}
}

func TestBadNamesRejected(t *testing.T) {
	a, _ := newFileCA(t, InitOptions{})
	reg := prometheus.NewRegistry()
	m := NewMinter(a, MinterOptions{}, reg)
	bad := []string{
		"*.example.com", "*", "a.*.com", "a\x00b.example.com", "example.com\x00",
		strings.Repeat("a", 64) + ".com",
		strings.Repeat("abcdefghi.", 25) + "abcd.com", // 258 bytes
		strings.Repeat("a.", 2000) + "com",
		"exa mple.com", "exa\tmple.com", "-a.example.com", "a-.example.com", "a..example.com",
		".example.com", ".", "..", "example.com..", "127.1", "0x7f.1", "1.2.3.4.5",
		"ex@mple.com", "a/b.com", "a:b", "user@host", "[::1]", "xn--zz--.com", "xn--a.com",
		"\xff\xfe.com", "a\u200b.com", "fe80::1%eth0",
	}
	for _, n := range bad {
		_, err := m.Certificate(context.Background(), n, netip.MustParseAddr("203.0.113.1"))
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("%q: err %v, want ErrInvalidName", n, err)
		}
	}
	if got := metric(t, reg, "gwlbproxy_ca_leaf_errors_total", "reason", "invalid_name"); got != float64(len(bad)) {
		t.Errorf("invalid_name counter %v, want %d", got, len(bad))
	}
	if got := metric(t, reg, "gwlbproxy_ca_leaf_mints_total"); got != 0 {
		t.Errorf("mints %v after only bad names", got)
	}
}

func TestNormalizeName(t *testing.T) {
	good := map[string]string{
		"example.com":                    "example.com",
		"EXAMPLE.Com.":                   "example.com",
		"münchen.de":                     "xn--mnchen-3ya.de",
		"MÜNCHEN.DE":                     "xn--mnchen-3ya.de",
		"xn--mnchen-3ya.de":              "xn--mnchen-3ya.de",
		"XN--MNCHEN-3YA.DE":              "xn--mnchen-3ya.de",
		"foo_bar.example.com":            "foo_bar.example.com",
		"localhost":                      "localhost",
		"1password.com":                  "1password.com",
		"a.b-c.d1":                       "a.b-c.d1",
		strings.Repeat("a", 63) + ".com": strings.Repeat("a", 63) + ".com",
		strings.Repeat("abcdefghi.", 24) + "abcdefghi.com": strings.Repeat("abcdefghi.", 24) + "abcdefghi.com", // 253
	}
	for in, want := range good {
		got, err := NormalizeName(in)
		if err != nil || got != want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	n := "already.normal.example"
	if allocs := testing.AllocsPerRun(100, func() { NormalizeName(n) }); allocs != 0 {
		t.Errorf("normalized name allocates %v times", allocs)
	}
}

func FuzzNormalizeName(f *testing.F) {
	for _, s := range []string{"example.com", "münchen.de", "xn--mnchen-3ya.de", "*.a", "a..b", "A.B.", "\x00", "127.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := NormalizeName(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidName) {
				t.Fatalf("%q: error %v does not wrap ErrInvalidName", s, err)
			}
			return
		}
		if why := checkLDH(n); why != "" {
			t.Fatalf("%q -> %q fails the hostname check: %s", s, n, why)
		}
		if n2, err := NormalizeName(n); err != nil || n2 != n {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", s, n, n2, err)
		}
	})
}

func TestCacheLRUBoundAndEviction(t *testing.T) {
	a, _ := newFileCA(t, InitOptions{})
	reg := prometheus.NewRegistry()
	m := NewMinter(a, MinterOptions{CacheSize: 3}, reg)
	ctx := context.Background()
	get := func(n string) *tls.Certificate {
		t.Helper()
		c, err := m.Certificate(ctx, n, netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a1 := get("a.example")
	get("b.example")
	get("c.example")
	if get("a.example") != a1 { // a is now most recently used
		t.Fatal("cache miss for a cached name")
	}
	get("d.example") // evicts b, the least recently used
	if s := m.Stats(); s.CacheEntries != 3 || s.Evictions != 1 || s.Mints != 4 {
		t.Fatalf("after 4 names in a 3-cache: %+v", s)
	}
	if get("a.example") != a1 {
		t.Fatal("recently used entry was evicted")
	}
	get("b.example") // must be re-minted
	if got := metric(t, reg, "gwlbproxy_ca_leaf_mints_total"); got != 5 {
		t.Errorf("mints %v, want 5 (b re-minted after eviction)", got)
	}
	for i := 0; i < 50; i++ {
		get(fmt.Sprintf("n%d.example", i))
	}
	if got := metric(t, reg, "gwlbproxy_ca_leaf_cache_entries"); got != 3 {
		t.Errorf("cache entries %v, want bound 3", got)
	}
	if got := metric(t, reg, "gwlbproxy_ca_leaf_cache_evictions_total"); got != 52 {
		t.Errorf("evictions %v, want 52", got)
	}
	if got := metric(t, reg, "gwlbproxy_ca_leaf_cache_hits_total"); got != 2 {
		t.Errorf("hits %v, want 2", got)
	}
}

func TestSingleflightOneMint(t *testing.T) {
	a, _ := newFileCA(t, InitOptions{})
	reg := prometheus.NewRegistry()
	m := NewMinter(a, MinterOptions{}, reg)
	const n = 1000
	var wg sync.WaitGroup
	start := make(chan struct{})
	certs := make([]*tls.Certificate, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			certs[i], errs[i] = m.Certificate(context.Background(), "stampede.example.com", netip.Addr{})
		}()
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if certs[i] != certs[0] {
			t.Fatalf("goroutine %d got a different certificate", i)
		}
	}
	if got := metric(t, reg, "gwlbproxy_ca_leaf_mints_total"); got != 1 {
		t.Fatalf("mints %v for one name under 1000 concurrent requests, want 1", got)
	}
	hits := metric(t, reg, "gwlbproxy_ca_leaf_cache_hits_total")
	misses := metric(t, reg, "gwlbproxy_ca_leaf_cache_misses_total")
	if hits+misses != n {
		t.Errorf("hits %v + misses %v != %d", hits, misses, n)
	}
}

func TestRenewalBeforeExpiry(t *testing.T) {
	a, _ := newFileCA(t, InitOptions{})
	clk := &fakeClock{t: time.Now()}
	reg := prometheus.NewRegistry()
	m := NewMinter(a, MinterOptions{Now: clk.Now}, reg) // 48h + 1h backdate: renew when < 12h15m left
	ctx := context.Background()
	c1, err := m.Certificate(ctx, "renew.example", netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(35 * time.Hour) // 13h left: still fresh
	c2, _ := m.Certificate(ctx, "renew.example", netip.Addr{})
	if c2 != c1 {
		t.Fatal("leaf replaced with more than 25% validity left")
	}
	clk.Add(time.Hour) // 12h left: due
	c3, err := m.Certificate(ctx, "renew.example", netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	if c3 == c1 || c3.Leaf.SerialNumber.Cmp(c1.Leaf.SerialNumber) == 0 {
		t.Fatal("leaf not renewed with less than 25% validity left")
	}
	if !c3.Leaf.NotAfter.After(c1.Leaf.NotAfter) {
		t.Errorf("renewed leaf expires %v, not after the old %v", c3.Leaf.NotAfter, c1.Leaf.NotAfter)
	}
	if err := verifyLeaf(c3.Certificate[0], nil, rootPool(a.Certificate()), "renew.example", clk.Now()); err != nil {
		t.Errorf("renewed leaf: %v", err)
	}
	if got := metric(t, reg, "gwlbproxy_ca_leaf_renewals_total"); got != 1 {
		t.Errorf("renewals %v, want 1", got)
	}
	if s := m.Stats(); s.CacheEntries != 1 || s.Mints != 2 {
		t.Errorf("stats %+v", s)
	}
	// The shared leaf key rotates once per validity.
	if !c3.PrivateKey.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c1.PrivateKey.(crypto.Signer).Public()) {
		t.Error("shared leaf key rotated before one validity elapsed")
	}
	clk.Add(13 * time.Hour)
	c4, _ := m.Certificate(ctx, "other.example", netip.Addr{})
	if c4.PrivateKey.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c1.PrivateKey.(crypto.Signer).Public()) {
		t.Error("shared leaf key not rotated after one validity")
	}
}

func TestLeafNeverOutlivesIssuer(t *testing.T) {
	now := time.Now()
	a, _ := newFileCA(t, InitOptions{Validity: 10 * time.Hour, Now: func() time.Time { return now }})
	m := NewMinter(a, MinterOptions{Now: func() time.Time { return now }}, nil)
	c, err := m.Certificate(context.Background(), "short.example", netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Leaf.NotAfter.After(a.Certificate().NotAfter) {
		t.Fatalf("leaf %v outlives issuer %v", c.Leaf.NotAfter, a.Certificate().NotAfter)
	}
	later := NewMinter(a, MinterOptions{Now: func() time.Time { return now.Add(11 * time.Hour) }}, nil)
	if _, err := later.Certificate(context.Background(), "short.example", netip.Addr{}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("mint with expired issuer: %v", err)
	}
	if later.Health() == nil {
		t.Error("Health nil with an expired issuer")
	}
	if m.Health() != nil {
		t.Errorf("Health: %v", m.Health())
	}
}

func TestPerLeafKeys(t *testing.T) {
	a, _ := newFileCA(t, InitOptions{})
	ctx := context.Background()
	for _, per := range []bool{false, true} {
		m := NewMinter(a, MinterOptions{PerLeafKeys: per}, nil)
		c1, _ := m.Certificate(ctx, "one.example", netip.Addr{})
		c2, _ := m.Certificate(ctx, "two.example", netip.Addr{})
		same := c1.PrivateKey.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c2.PrivateKey.(crypto.Signer).Public())
		if same == per {
			t.Errorf("PerLeafKeys=%v: keys shared=%v", per, same)
		}
	}
}

// blockingSigner delays signatures until released.
type blockingSigner struct {
	crypto.Signer
	release chan struct{}
}

func (b *blockingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	<-b.release
	return b.Signer.Sign(r, d, o)
}

func TestContextCancelDoesNotLoseMint(t *testing.T) {
	fa, _ := newFileCA(t, InitOptions{})
	bs := &blockingSigner{Signer: fa.Signer(), release: make(chan struct{})}
	a, err := NewAuthority(fa.Certificate(), nil, bs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	m := NewMinter(a, MinterOptions{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Certificate(ctx, "slow.example", netip.Addr{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	close(bs.release)
	deadline := time.Now().Add(30 * time.Second)
	for m.Stats().Mints == 0 {
		if time.Now().After(deadline) {
			t.Fatal("abandoned mint never completed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := m.Certificate(context.Background(), "slow.example", netip.Addr{}); err != nil || m.Stats().Hits != 1 {
		t.Fatalf("abandoned mint not cached: %v %+v", err, m.Stats())
	}
}

// TestConcurrentRace hammers a small cache from many goroutines with
// overlapping names, renewals and evictions; run with -race.
func TestConcurrentRace(t *testing.T) {
	a, _ := newFileCA(t, InitOptions{})
	clk := &fakeClock{t: time.Now()}
	reg := prometheus.NewRegistry()
	m := NewMinter(a, MinterOptions{CacheSize: 8, Now: clk.Now}, reg)
	roots := rootPool(a.Certificate())
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 60 {
				name := "h" + strconv.Itoa((g*7+i)%20) + ".race.example"
				c, err := m.Certificate(context.Background(), name, netip.Addr{})
				if err != nil {
					t.Error(err)
					return
				}
				if i%15 == 0 {
					if err := verifyLeaf(c.Certificate[0], nil, roots, name, c.Leaf.NotBefore.Add(time.Hour)); err != nil {
						t.Error(err)
					}
				}
				if g == 0 && i%20 == 0 {
					clk.Add(20 * time.Hour)
				}
				_ = m.Stats()
				_ = m.Health()
			}
		}()
	}
	wg.Wait()
	if got := metric(t, reg, "gwlbproxy_ca_leaf_cache_entries"); got > 8 {
		t.Errorf("cache grew to %v over its bound 8", got)
	}
}

func BenchmarkMint(b *testing.B) {
	a, _ := newFileCA(b, InitOptions{})
	for _, per := range []bool{false, true} {
		b.Run("per_leaf_key="+strconv.FormatBool(per), func(b *testing.B) {
			m := NewMinter(a, MinterOptions{PerLeafKeys: per, CacheSize: 1024}, nil)
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				if _, err := m.Certificate(ctx, "h"+strconv.Itoa(i)+".bench.example", netip.Addr{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkCacheHit(b *testing.B) {
	a, _ := newFileCA(b, InitOptions{})
	m := NewMinter(a, MinterOptions{}, nil)
	ctx := context.Background()
	if _, err := m.Certificate(ctx, "hit.bench.example", netip.Addr{}); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.Certificate(ctx, "hit.bench.example", netip.Addr{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := m.Certificate(ctx, "hit.bench.example", netip.Addr{}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
