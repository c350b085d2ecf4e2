package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestInitWritesRootAndKey(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	dir := filepath.Join(t.TempDir(), "ca")
	err := Init(dir, InitOptions{CommonName: "Test Root", Organization: "Acme", Validity: 365 * 24 * time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %04o, want 0600", fi.Mode().Perm())
	}
	keyPEM, _ := os.ReadFile(filepath.Join(dir, KeyFileName))
	blk, _ := pem.Decode(keyPEM)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		t.Fatalf("key file is not a PKCS#8 PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		t.Fatalf("key is %T, want ECDSA P-256", k)
	}
	certs, err := readCertFile(filepath.Join(dir, CertFileName))
	if err != nil {
		t.Fatal(err)
	}
	c := certs[0]
	if c.Subject.CommonName != "Test Root" || len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != "Acme" {
		t.Errorf("subject %v", c.Subject)
	}
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("root is not a signing CA: isCA=%v bc=%v ku=%v", c.IsCA, c.BasicConstraintsValid, c.KeyUsage)
	}
	if !c.NotAfter.Equal(now.Add(365 * 24 * time.Hour).Truncate(time.Second)) {
		t.Errorf("NotAfter %v", c.NotAfter)
	}
	if !c.PublicKey.(*ecdsa.PublicKey).Equal(ek.Public()) {
		t.Error("certificate key differs from key file")
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("root not self-signed: %v", err)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 127 {
		t.Errorf("serial %v", c.SerialNumber)
	}
}

func TestInitDefaults(t *testing.T) {
	a, _ := newFileCA(t, InitOptions{})
	c := a.Certificate()
	if c.Subject.CommonName != "gwlbproxy CA" {
		t.Errorf("CN %q", c.Subject.CommonName)
	}
	if life := c.NotAfter.Sub(c.NotBefore); life < 10*365*24*time.Hour {
		t.Errorf("validity %v, want >= 10 years", life)
	}
	if len(a.Chain()) != 0 {
		t.Errorf("a root must not be in the chain, got %d certs", len(a.Chain()))
	}
}

func TestInitRefusesOverwrite(t *testing.T) {
	_, dir := newFileCA(t, InitOptions{})
	before := map[string][]byte{}
	for _, f := range []string{CertFileName, KeyFileName} {
		before[f], _ = os.ReadFile(filepath.Join(dir, f))
	}
	err := Init(dir, InitOptions{})
	if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second Init: %v, want refusal", err)
	}
	for f, b := range before {
		after, _ := os.ReadFile(filepath.Join(dir, f))
		if !bytes.Equal(b, after) {
			t.Errorf("%s changed", f)
		}
	}

	// Only one of the two files present: still refused, nothing created.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, CertFileName), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Init(dir2, InitOptions{}); err == nil {
		t.Fatal("Init over an existing ca.crt succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir2, KeyFileName)); !os.IsNotExist(err) {
		t.Errorf("ca.key created despite refusal: %v", err)
	}
}

func TestLoadFilesRefusesReadableKey(t *testing.T) {
	_, dir := newFileCA(t, InitOptions{})
	key := filepath.Join(dir, KeyFileName)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		if err := os.Chmod(key, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadFiles(filepath.Join(dir, CertFileName), key)
		if err == nil {
			t.Fatalf("mode %04o accepted", mode)
		}
		if !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "group or others") {
			t.Errorf("mode %04o: unclear error %q", mode, err)
		}
	}
	if err := os.Chmod(key, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFiles(filepath.Join(dir, CertFileName), key); err != nil {
		t.Errorf("mode 0400 refused: %v", err)
	}
}

func TestLoadFilesRefusesMismatchedKey(t *testing.T) {
	_, dirA := newFileCA(t, InitOptions{})
	_, dirB := newFileCA(t, InitOptions{})
	_, err := LoadFiles(filepath.Join(dirA, CertFileName), filepath.Join(dirB, KeyFileName))
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched key: %v", err)
	}
	if !strings.Contains(err.Error(), filepath.Join(dirA, CertFileName)) {
		t.Errorf("error does not name the file: %v", err)
	}
}

// writePair writes a certificate built from tmpl (self-signed) and its key.
func writePair(t *testing.T, tmpl *x509.Certificate) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600)
	return certFile, keyFile
}

func TestLoadFilesRefusesNonCAAndExpired(t *testing.T) {
	now := time.Now()
	cases := []struct {
		name string
		tmpl x509.Certificate
		want string
	}{
		{"leaf", x509.Certificate{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature}, "not a CA"},
		{"no-certsign", x509.Certificate{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageDigitalSignature}, "certSign"},
		{"expired", x509.Certificate{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour), BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign}, "expired"},
		{"future", x509.Certificate{NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour), BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign}, "not valid before"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := tc.tmpl
			tmpl.SerialNumber, _ = randomSerial()
			tmpl.Subject = pkix.Name{CommonName: tc.name}
			cf, kf := writePair(t, &tmpl)
			_, err := LoadFiles(cf, kf)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), cf) {
				t.Fatalf("got %v, want error containing %q and the file name", err, tc.want)
			}
		})
	}
}

func TestLoadFilesBadInput(t *testing.T) {
	_, dir := newFileCA(t, InitOptions{})
	junk := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(junk, []byte("not pem at all"), 0o600)
	if _, err := LoadFiles(junk, filepath.Join(dir, KeyFileName)); err == nil || !strings.Contains(err.Error(), junk) {
		t.Errorf("junk cert: %v", err)
	}
	if _, err := LoadFiles(filepath.Join(dir, CertFileName), junk); err == nil || !strings.Contains(err.Error(), junk) {
		t.Errorf("junk key: %v", err)
	}
	if _, err := LoadFiles(filepath.Join(dir, "missing"), junk); err == nil {
		t.Error("missing cert accepted")
	}
}

func TestExportPEMAndDER(t *testing.T) {
	a, dir := newFileCA(t, InitOptions{})
	var p, d bytes.Buffer
	if err := Export(&p, filepath.Join(dir, CertFileName), false); err != nil {
		t.Fatal(err)
	}
	if err := Export(&d, filepath.Join(dir, CertFileName), true); err != nil {
		t.Fatal(err)
	}
	blk, rest := pem.Decode(p.Bytes())
	if blk == nil || blk.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("PEM export malformed")
	}
	if !bytes.Equal(blk.Bytes, a.Certificate().Raw) || !bytes.Equal(d.Bytes(), a.Certificate().Raw) {
		t.Fatal("exported certificate differs from the CA")
	}
	if strings.Contains(p.String(), "PRIVATE") {
		t.Fatal("export leaked key material")
	}
}

// TestLoadFilesIntermediateBundle loads an intermediate CA whose cert file
// also holds the root: the chain sent to clients is the intermediate only.
func TestLoadFilesIntermediateBundle(t *testing.T) {
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl, _ := rootTemplate(InitOptions{}.withDefaults(), 1)
	rootDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	im, err := NewIntermediate(t.Context(), root, rootKey, IntermediateOptions{CommonName: "file intermediate"})
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(im.Signer())
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "bundle.pem"), filepath.Join(dir, "key.pem")
	bundle := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: im.Certificate().Raw})
	bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})...)
	os.WriteFile(cf, bundle, 0o644)
	os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600)
	a, err := LoadFiles(cf, kf)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Chain()) != 1 || !bytes.Equal(a.Chain()[0], im.Certificate().Raw) {
		t.Fatalf("chain has %d certs, want the intermediate only", len(a.Chain()))
	}
	c, err := NewMinter(a, MinterOptions{}, nil).Certificate(t.Context(), "bundle.example", netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Certificate) != 2 {
		t.Fatalf("leaf carries %d certs, want leaf + intermediate", len(c.Certificate))
	}
	if err := verifyLeaf(c.Certificate[0], c.Certificate[1:], rootPool(root), "bundle.example", time.Now()); err != nil {
		t.Fatal(err)
	}
}

// TestInitOwner: with an owner the service user can read the key (as the
// unit's User= does) while its mode stays 0600 and others cannot enter
// the directory.
func TestInitOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	const uid, gid = 65534, 65534
	base := t.TempDir()
	os.Chmod(base, 0o711) // let the test user traverse
	os.Chmod(filepath.Dir(base), 0o711)
	dir := filepath.Join(base, "ca")
	if err := Init(dir, InitOptions{Owner: &Owner{UID: uid, GID: gid}}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode().Perm() != 0o600 || sys.Uid != uid || sys.Gid != gid {
		t.Fatalf("key mode %o owner %d:%d, want 0600 %d:%d", st.Mode().Perm(), sys.Uid, sys.Gid, uid, gid)
	}
	dst, _ := os.Stat(dir)
	dsys := dst.Sys().(*syscall.Stat_t)
	if dst.Mode().Perm() != 0o750 || dsys.Uid != 0 || dsys.Gid != gid {
		t.Fatalf("dir mode %o owner %d:%d, want 0750 0:%d", dst.Mode().Perm(), dsys.Uid, dsys.Gid, gid)
	}
	// Read it as that user, with no capabilities.
	cmd := exec.Command("cat", filepath.Join(dir, KeyFileName))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.Output()
	if err != nil || !strings.Contains(string(out), "PRIVATE KEY") {
		t.Fatalf("service user cannot read its key: %v", err)
	}
}
