package ca

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"go.yaml.in/yaml/v3"
)

// pemPair returns the PEM certificate and key of a fresh files CA.
func pemPair(t *testing.T) (certPEM, keyPEM string, a Authority) {
	t.Helper()
	a, dir := newFileCA(t, InitOptions{})
	c, _ := os.ReadFile(filepath.Join(dir, CertFileName))
	k, _ := os.ReadFile(filepath.Join(dir, KeyFileName))
	return string(c), string(k), a
}

func TestSecretsManagerSource(t *testing.T) {
	f, srv := newFakeSecrets(t)
	client := secretsmanager.NewFromConfig(testAWSConfig(srv))
	certPEM, keyPEM, a := pemPair(t)
	_, otherKey, _ := pemPair(t)
	js, _ := json.Marshal(map[string]string{"certificate": certPEM, "private_key": keyPEM})
	arn := "arn:aws:secretsmanager:us-east-1:111122223333:secret:gwlbproxy/ca-AbCdEf"
	f.secrets[arn] = string(js)
	f.secrets["bundle"] = keyPEM + certPEM // key first: order of blocks is free
	f.binary["binary"] = []byte(certPEM + keyPEM)
	f.secrets["mismatch"] = certPEM + otherKey
	f.secrets["nokey"] = certPEM
	f.secrets["badjson"] = `{"certificate": "` + strings.ReplaceAll(keyPEM, "\n", "") + `", broken`
	f.secrets["jsonmissing"] = `{"certificate": "x"}`

	for _, id := range []string{arn, "bundle", "binary"} {
		got, err := LoadSecretsManager(context.Background(), client, id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if !got.Certificate().Equal(a.Certificate()) {
			t.Fatalf("%s: wrong certificate", id)
		}
		m := NewMinter(got, MinterOptions{}, nil)
		c, err := m.Certificate(context.Background(), "sm.example", netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyLeaf(c.Certificate[0], c.Certificate[1:], rootPool(a.Certificate()), "sm.example", time.Now()); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	keyBody := strings.Split(keyPEM, "\n")[1]
	for id, want := range map[string]string{
		"mismatch":    "does not match",
		"nokey":       "no PEM private key",
		"badjson":     "not valid JSON",
		"jsonmissing": "private_key",
		"absent":      "ResourceNotFoundException",
	} {
		_, err := LoadSecretsManager(context.Background(), client, id)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), id) {
			t.Errorf("%s: %v, want error naming the secret and %q", id, err, want)
		}
		if err != nil && strings.Contains(err.Error(), keyBody[:20]) {
			t.Errorf("%s: error leaks key material", id)
		}
	}
	if n := f.count("GetSecretValue"); n != 8 {
		t.Errorf("GetSecretValue calls %d, want 8", n)
	}
}

func TestConfigValidate(t *testing.T) {
	def := DefaultConfig()
	if err := def.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	kms := func(c *Config) { c.Source, c.KMSKeyID, c.RootCertFile = "kms", "alias/gwlbproxy", "/etc/root.crt" }
	cases := []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Source = "vault" }, "source: "},
		{func(c *Config) { c.CertFile = "" }, "cert_file: "},
		{func(c *Config) { c.KeyFile = "" }, "key_file: "},
		{func(c *Config) { c.Source = "secretsmanager" }, "secret_arn: "},
		{func(c *Config) { c.Source, c.SecretARN = "secretsmanager", "arn:aws:s3:::bucket" }, "secret_arn: "},
		{func(c *Config) { c.Source = "kms" }, "kms_key_id: "},
		{func(c *Config) { c.Source, c.KMSKeyID = "kms", "k" }, "root_cert_file: "},
		{func(c *Config) { c.LeafValidity = 10 * time.Minute }, "leaf_validity: "},
		{func(c *Config) { c.LeafValidity = 800 * time.Hour }, "leaf_validity: "},
		{func(c *Config) { c.CacheSize = 0 }, "cache_size: "},
		{func(c *Config) { c.PermittedDNSDomains = []string{"example.com"} }, "permitted_dns_domains: "},
		{func(c *Config) { c.ExcludedIPRanges = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} }, "excluded_ip_ranges: "},
		{func(c *Config) { kms(c); c.IntermediateValidity = 30 * time.Minute }, "intermediate_validity: "},
		{func(c *Config) { kms(c); c.IntermediateValidity = 24 * time.Hour }, "intermediate_validity: "}, // < leaf 48h
		{func(c *Config) { kms(c); c.PermittedDNSDomains = []string{"ok.example", "*.bad"} }, "permitted_dns_domains[1]: "},
		{func(c *Config) { kms(c); c.ExcludedDNSDomains = []string{"a..b"} }, "excluded_dns_domains[0]: "},
		{func(c *Config) { kms(c); c.PermittedIPRanges = []netip.Prefix{{}} }, "permitted_ip_ranges[0]: "},
		{func(c *Config) { kms(c); c.IntermediateCommonName = strings.Repeat("x", 65) }, "intermediate_common_name: "},
	}
	for i, tc := range cases {
		c := DefaultConfig()
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("case %d: %v, want prefix %q", i, err, tc.want)
		}
	}
	c := DefaultConfig()
	kms(&c)
	c.PermittedDNSDomains = []string{".Corp.Example", "example.com"}
	c.ExcludedIPRanges = []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16")}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid kms config: %v", err)
	}
	if got := c.IntermediateOptions(nil).PermittedDNSDomains; got[0] != ".corp.example" {
		t.Errorf("constraints not normalized: %v", got)
	}
}

func TestConfigYAML(t *testing.T) {
	src := `
source: kms
kms_key_id: alias/gwlbproxy-ca
root_cert_file: /etc/gwlbproxy/ca/root.crt
leaf_validity: 24h
cache_size: 500
intermediate_validity: 168h
permitted_dns_domains: [example.com]
excluded_ip_ranges: [169.254.0.0/16, "fd00:ec2::/32"]
`
	c := DefaultConfig()
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.LeafValidity != 24*time.Hour || c.CacheSize != 500 || len(c.ExcludedIPRanges) != 2 || c.ExcludedIPRanges[1].Bits() != 32 {
		t.Fatalf("decoded %+v", c)
	}
}

func TestOpen(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// files
	_, dir := newFileCA(t, InitOptions{})
	fc := DefaultConfig()
	fc.CertFile, fc.KeyFile = filepath.Join(dir, CertFileName), filepath.Join(dir, KeyFileName)
	if _, err := Open(ctx, fc, aws.Config{}, nil); err != nil {
		t.Fatalf("files: %v", err)
	}
	fc.CacheSize = -1
	if _, err := Open(ctx, fc, aws.Config{}, nil); err == nil || !strings.Contains(err.Error(), "cache_size") {
		t.Fatalf("invalid config opened: %v", err)
	}

	// secretsmanager
	f, srv := newFakeSecrets(t)
	certPEM, keyPEM, _ := pemPair(t)
	f.secrets["gwlbproxy/ca"] = certPEM + keyPEM
	sc := DefaultConfig()
	sc.Source, sc.SecretARN = SourceSecretsManager, "gwlbproxy/ca"
	if _, err := Open(ctx, sc, testAWSConfig(srv), nil); err != nil {
		t.Fatalf("secretsmanager: %v", err)
	}

	// kms: root written by InitKMS, intermediate minted by Open.
	fk, ksrv := newFakeKMS(t)
	fk.addKey(t, "1234abcd-12ab-34cd-56ef-1234567890ab", "ECC_NIST_P256")
	kc := DefaultConfig()
	kc.Source, kc.KMSKeyID = SourceKMS, "1234abcd-12ab-34cd-56ef-1234567890ab"
	kc.RootCertFile = filepath.Join(t.TempDir(), "root.crt")
	kc.PermittedDNSDomains = []string{"example.com"}
	rootPEM, err := InitKMS(ctx, kmsClient(ksrv), kc.KMSKeyID, InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(kc.RootCertFile, rootPEM, 0o644)
	a, err := Open(ctx, kc, testAWSConfig(ksrv), nil)
	if err != nil {
		t.Fatalf("kms: %v", err)
	}
	root, _ := parseCertsPEM(rootPEM)
	m := NewMinter(a, kc.MinterOptions(nil), nil)
	c, err := m.Certificate(ctx, "open.example.com", netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyLeaf(c.Certificate[0], c.Certificate[1:], rootPool(root[0]), "open.example.com", time.Now()); err != nil {
		t.Fatalf("kms leaf via Open: %v", err)
	}
	var buf bytes.Buffer
	if err := Export(&buf, kc.RootCertFile, true); err != nil || !bytes.Equal(buf.Bytes(), root[0].Raw) {
		t.Errorf("export of the kms root: %v", err)
	}

	// A root file whose key is not the KMS key is refused.
	_, otherDir := newFileCA(t, InitOptions{})
	kc.RootCertFile = filepath.Join(otherDir, CertFileName)
	if _, err := Open(ctx, kc, testAWSConfig(ksrv), nil); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("foreign root: %v", err)
	}
}

// FuzzParseSecret: whatever a secret holds, parsing returns an Authority
// or an error, never panics.
func FuzzParseSecret(f *testing.F) {
	f.Add([]byte(`{"certificate":"x","private_key":"y"}`))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := parseSecret(b, time.Now())
		if err == nil && (a.Certificate() == nil || a.Signer() == nil) {
			t.Fatal("nil authority without error")
		}
	})
}
