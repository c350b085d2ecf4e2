package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// kmsRoot sets up a fake KMS with key "root" and returns a real SDK
// client, the root certificate made by InitKMS and a signer.
func kmsRoot(t *testing.T) (*fakeKMS, *kms.Client, *x509.Certificate, *KMSSigner) {
	t.Helper()
	f, srv := newFakeKMS(t)
	f.addKey(t, "root", "ECC_NIST_P256")
	client := kms.NewFromConfig(testAWSConfig(srv))
	ctx := context.Background()
	pemBytes, err := InitKMS(ctx, client, "root", InitOptions{CommonName: "Fleet Root", Organization: "Acme"})
	if err != nil {
		t.Fatalf("InitKMS: %v", err)
	}
	certs, err := parseCertsPEM(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := NewKMSSigner(ctx, client, "root")
	if err != nil {
		t.Fatal(err)
	}
	return f, client, certs[0], signer
}

func TestInitKMS(t *testing.T) {
	f, _, root, _ := kmsRoot(t)
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Fatalf("root not self-signed by the KMS key: %v", err)
	}
	k, _, _ := f.key("root")
	if !k.PublicKey.Equal(root.PublicKey) {
		t.Fatal("root public key is not the KMS key")
	}
	if !root.IsCA || root.MaxPathLen != 1 || root.Subject.CommonName != "Fleet Root" {
		t.Errorf("root: isCA=%v pathlen=%d subject=%v", root.IsCA, root.MaxPathLen, root.Subject)
	}
	if n := f.count("Sign"); n != 1 {
		t.Errorf("KMS Sign called %d times, want 1", n)
	}
}

func TestNewKMSSignerRejects(t *testing.T) {
	f, srv := newFakeKMS(t)
	f.addKey(t, "p384", "ECC_NIST_P384")
	client := kms.NewFromConfig(testAWSConfig(srv))
	if _, err := NewKMSSigner(context.Background(), client, "p384"); err == nil || !strings.Contains(err.Error(), "key spec") {
		t.Errorf("wrong key spec: %v", err)
	}
	_, err := NewKMSSigner(context.Background(), client, "missing")
	if err == nil || !strings.Contains(err.Error(), "NotFoundException") || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing key: %v", err)
	}
	f.addKey(t, "ok", "ECC_NIST_P256")
	s, err := NewKMSSigner(context.Background(), client, "ok")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign(nil, []byte("short"), nil); err == nil {
		t.Error("signing a non-digest succeeded")
	}
}

// TestKMSChain proves leaf -> per-instance intermediate -> KMS root with
// x509 Verify and a real TLS handshake, and that the name constraints are
// in the intermediate.
func TestKMSChain(t *testing.T) {
	_, _, root, signer := kmsRoot(t)
	ctx := context.Background()
	im, err := NewIntermediate(ctx, root, signer, IntermediateOptions{
		CommonName:          "gwlbproxy intermediate i-0123",
		PermittedDNSDomains: []string{"example.com", ".corp.example"},
		ExcludedIPRanges:    []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16")},
	})
	if err != nil {
		t.Fatal(err)
	}
	ic := im.Certificate()
	if !ic.IsCA || !ic.MaxPathLenZero || ic.MaxPathLen != 0 || !ic.PermittedDNSDomainsCritical {
		t.Errorf("intermediate flags: isCA=%v pathlen0=%v critical=%v", ic.IsCA, ic.MaxPathLenZero, ic.PermittedDNSDomainsCritical)
	}
	if d := time.Until(ic.NotAfter); d < 6*24*time.Hour || d > 7*24*time.Hour+time.Minute {
		t.Errorf("intermediate validity left %v, want ~7d", d)
	}
	if _, ok := im.Signer().(*ecdsa.PrivateKey); !ok {
		t.Errorf("intermediate signer %T, want in-memory ECDSA key", im.Signer())
	}
	if len(im.Chain()) != 1 || string(im.Chain()[0]) != string(ic.Raw) {
		t.Fatal("chain must be exactly the intermediate")
	}

	m := NewMinter(im, MinterOptions{}, nil)
	roots := rootPool(root)
	leaf, err := m.Certificate(ctx, "www.example.com", netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(ic)
	chains, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: "www.example.com", Roots: roots, Intermediates: inter})
	if err != nil {
		t.Fatalf("leaf -> intermediate -> root: %v", err)
	}
	if len(chains) != 1 || len(chains[0]) != 3 || !chains[0][1].Equal(ic) || !chains[0][2].Equal(root) {
		t.Fatalf("unexpected chain %v", chains)
	}
	if _, err := m.Certificate(ctx, "a.b.corp.example", netip.Addr{}); err != nil {
		t.Errorf("subdomain of .corp.example: %v", err)
	}
	for _, n := range []string{"evil.org", "corp.example", "notexample.com"} {
		if _, err := m.Certificate(ctx, n, netip.Addr{}); !errors.Is(err, ErrNotPermitted) {
			t.Errorf("%s: %v, want ErrNotPermitted", n, err)
		}
	}
	if _, err := m.Certificate(ctx, "", netip.MustParseAddr("169.254.169.254")); !errors.Is(err, ErrNotPermitted) {
		t.Errorf("excluded IP: %v", err)
	}
	if _, err := m.Certificate(ctx, "", netip.MustParseAddr("203.0.113.5")); err != nil {
		t.Errorf("IP without IP permits: %v", err)
	}
	if m.Stats().NotPermitted != 4 {
		t.Errorf("not_permitted %d, want 4", m.Stats().NotPermitted)
	}

	// A leaf for a forbidden name signed by the intermediate key anyway
	// (what a client ignoring our minter's check would see) fails.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := randomSerial()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "evil.org"}, DNSNames: []string{"evil.org"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true,
	}, ic, &key.PublicKey, im.Signer())
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyLeaf(der, im.Chain(), roots, "evil.org", time.Now()); err == nil {
		t.Fatal("leaf outside the name constraints verifies")
	}

	// Real TLS: the server sends leaf + intermediate, the client trusts
	// only the KMS root.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		s := tls.Server(c, &tls.Config{GetCertificate: m.GetCertificate})
		if s.Handshake() == nil {
			io.WriteString(s, "ok")
		}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "api.example.com"})
	if err != nil {
		t.Fatalf("TLS via KMS chain: %v", err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "ok" || len(c.ConnectionState().PeerCertificates) != 2 {
		t.Errorf("got %q with %d peer certs", b, len(c.ConnectionState().PeerCertificates))
	}
}

func TestIntermediateRenewAndOutage(t *testing.T) {
	f, _, root, signer := kmsRoot(t)
	ctx := context.Background()
	clk := &fakeClock{t: time.Now()}
	im, err := NewIntermediate(ctx, root, signer, IntermediateOptions{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	first := im.Certificate()
	if got, want := im.RenewAt(), clk.Now().Add(DefaultIntermediateValidity*2/3); !got.Equal(want) {
		t.Errorf("renew at %v, want %v", got, want)
	}
	m := NewMinter(im, MinterOptions{Now: clk.Now}, nil)
	l1, err := m.Certificate(ctx, "svc.example", netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}

	// KMS outage: renewal fails, the current intermediate stays.
	f.down.Store(true)
	clk.Add(5 * 24 * time.Hour)
	if err := im.Renew(ctx); err == nil || !strings.Contains(err.Error(), "KMSInternalException") {
		t.Fatalf("renew during outage: %v", err)
	}
	if im.Certificate() != first {
		t.Fatal("failed renewal replaced the intermediate")
	}
	if st := im.Stats(); st.Failures != 1 || st.LastError == "" {
		t.Errorf("stats after failure %+v", st)
	}
	if err := im.Health(); err != nil {
		t.Errorf("health with 2 days left: %v", err)
	}
	clk.Add(36 * time.Hour) // 12h left, < 1/6 of 7 days
	if err := im.Health(); err == nil {
		t.Error("health nil while expiring and renewal failing")
	}
	if m.Health() == nil {
		t.Error("minter health ignores the intermediate")
	}

	// KMS back: renewal swaps the whole generation.
	f.down.Store(false)
	if err := im.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	second := im.Certificate()
	if second == first || second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("intermediate not replaced")
	}
	if err := im.Health(); err != nil {
		t.Errorf("health after renewal: %v", err)
	}
	// The old leaf (issued 5.5 days ago, expired by now) is re-minted
	// under the new intermediate and chains to the same root.
	l2, err := m.Certificate(ctx, "svc.example", netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	if l2 == l1 {
		t.Fatal("stale leaf served")
	}
	if err := verifyLeaf(l2.Certificate[0], l2.Certificate[1:], rootPool(root), "svc.example", clk.Now()); err != nil {
		t.Fatalf("leaf after rotation: %v", err)
	}
	if string(l2.Certificate[1]) != string(second.Raw) {
		t.Error("leaf chain does not carry the new intermediate")
	}
}

// TestIntermediateRun lets Run renew a short-lived intermediate on its own.
func TestIntermediateRun(t *testing.T) {
	f, _, root, signer := kmsRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	im, err := NewIntermediate(ctx, root, signer, IntermediateOptions{Validity: 3 * time.Second, RetryInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	first := im.Certificate()
	done := make(chan struct{})
	go func() { im.Run(ctx); close(done) }()
	deadline := time.Now().Add(60 * time.Second)
	for im.Certificate() == first {
		if time.Now().After(deadline) {
			t.Fatal("Run did not renew the intermediate")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if f.count("Sign") < 3 { // root + first + renewal
		t.Errorf("KMS Sign calls %d", f.count("Sign"))
	}
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop on cancel")
	}
}

func TestNewIntermediateRejects(t *testing.T) {
	_, _, root, _ := kmsRoot(t)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := NewIntermediate(context.Background(), root, other, IntermediateOptions{}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("wrong root key: %v", err)
	}
	// A files root has path length 0 and cannot sign intermediates.
	a, _ := newFileCA(t, InitOptions{})
	if _, err := NewIntermediate(context.Background(), a.Certificate(), a.Signer(), IntermediateOptions{}); err == nil || !strings.Contains(err.Error(), "path length 0") {
		t.Errorf("pathlen-0 root: %v", err)
	}
}

// TestIntermediateRunRetriesAtPace: while KMS is down, Run retries every
// RetryInterval (not in a tight loop) and recovers when KMS returns.
func TestIntermediateRunRetriesAtPace(t *testing.T) {
	f, _, root, signer := kmsRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	im, err := NewIntermediate(ctx, root, signer, IntermediateOptions{Validity: 3 * time.Second, RetryInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	first := im.Certificate()
	f.down.Store(true)
	go im.Run(ctx)
	deadline := time.Now().Add(60 * time.Second)
	for im.Stats().Failures < 3 {
		if time.Now().After(deadline) {
			t.Fatal("Run did not retry")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Over the next second a paced loop adds about 5 attempts; a spinning
	// one (each failure takes ~1ms on loopback) hundreds.
	n0 := im.Stats().Failures
	time.Sleep(time.Second)
	if n := im.Stats().Failures - n0; n > 30 {
		t.Fatalf("%d renewal attempts in 1s with a 200ms retry interval: not paced", n)
	}
	f.down.Store(false)
	for im.Certificate() == first {
		if time.Now().After(deadline) {
			t.Fatal("Run did not recover after the outage")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if im.Stats().LastError != "" {
		t.Errorf("last error kept after recovery: %s", im.Stats().LastError)
	}
}
