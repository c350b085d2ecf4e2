package ca

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
)

// Sources of the issuing CA.
const (
	SourceFiles          = "files"
	SourceSecretsManager = "secretsmanager"
	SourceKMS            = "kms"
)

// Validation bounds.
const (
	minLeafValidity         = time.Hour
	maxLeafValidity         = 30 * 24 * time.Hour
	minIntermediateValidity = time.Hour
	maxIntermediateValidity = 90 * 24 * time.Hour
	maxCacheSize            = 10_000_000
)

// Config selects and tunes the CA. It is the `ca:` section of the
// gwlbproxy configuration.
type Config struct {
	// Source is where the issuing key lives: files, secretsmanager or kms.
	Source string `yaml:"source"`
	// CertFile and KeyFile (source files): PEM certificate (issuing cert
	// first, then intermediates) and PEM key, mode 0600 or stricter.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// SecretARN (source secretsmanager): name or ARN of the secret; see
	// LoadSecretsManager for its format.
	SecretARN string `yaml:"secret_arn"`
	// KMSKeyID (source kms): key id, ARN or alias of the ECC_NIST_P256
	// SIGN_VERIFY root key.
	KMSKeyID string `yaml:"kms_key_id"`
	// RootCertFile (source kms): the root certificate made by
	// `gwlbproxy ca init --kms`; its key must be the KMS key.
	RootCertFile string `yaml:"root_cert_file"`
	// LeafValidity of minted leaves (1h..720h).
	LeafValidity time.Duration `yaml:"leaf_validity"`
	// CacheSize bounds the leaf cache (entries).
	CacheSize int `yaml:"cache_size"`
	// PerLeafKeys gives each leaf its own key (see MinterOptions).
	PerLeafKeys bool `yaml:"per_leaf_keys"`
	// IntermediateValidity (source kms) of the per-instance intermediate
	// (1h..2160h, at least leaf_validity).
	IntermediateValidity time.Duration `yaml:"intermediate_validity"`
	// IntermediateCommonName (source kms); empty means
	// "gwlbproxy intermediate <hostname>".
	IntermediateCommonName string `yaml:"intermediate_common_name"`
	// Name constraints for the intermediate (source kms only); see
	// IntermediateOptions for what they can and cannot enforce.
	PermittedDNSDomains []string       `yaml:"permitted_dns_domains"`
	ExcludedDNSDomains  []string       `yaml:"excluded_dns_domains"`
	PermittedIPRanges   []netip.Prefix `yaml:"permitted_ip_ranges"`
	ExcludedIPRanges    []netip.Prefix `yaml:"excluded_ip_ranges"`
}

// DefaultConfig returns every default: a files CA in /etc/gwlbproxy/ca as
// written by `gwlbproxy ca init --dir /etc/gwlbproxy/ca`.
func DefaultConfig() Config {
	return Config{
		Source:               SourceFiles,
		CertFile:             "/etc/gwlbproxy/ca/" + CertFileName,
		KeyFile:              "/etc/gwlbproxy/ca/" + KeyFileName,
		LeafValidity:         DefaultLeafValidity,
		CacheSize:            DefaultCacheSize,
		IntermediateValidity: DefaultIntermediateValidity,
	}
}

// Validate reports the first invalid field, naming its yaml key.
func (c *Config) Validate() error {
	switch c.Source {
	case SourceFiles:
		if c.CertFile == "" {
			return fmt.Errorf("cert_file: required when source is %s", c.Source)
		}
		if c.KeyFile == "" {
			return fmt.Errorf("key_file: required when source is %s", c.Source)
		}
	case SourceSecretsManager:
		if c.SecretARN == "" || strings.ContainsAny(c.SecretARN, " \t\r\n") {
			return fmt.Errorf("secret_arn: %q is not a secret name or ARN (required when source is %s)", c.SecretARN, c.Source)
		}
		if strings.HasPrefix(c.SecretARN, "arn:") && !strings.Contains(c.SecretARN, ":secretsmanager:") {
			return fmt.Errorf("secret_arn: %q is not a Secrets Manager ARN", c.SecretARN)
		}
	case SourceKMS:
		if c.KMSKeyID == "" || strings.ContainsAny(c.KMSKeyID, " \t\r\n") {
			return fmt.Errorf("kms_key_id: %q is not a key id, ARN or alias (required when source is %s)", c.KMSKeyID, c.Source)
		}
		if c.RootCertFile == "" {
			return fmt.Errorf("root_cert_file: required when source is %s (write it with `gwlbproxy ca init --kms`)", c.Source)
		}
	default:
		return fmt.Errorf("source: %q is not one of %s, %s, %s", c.Source, SourceFiles, SourceSecretsManager, SourceKMS)
	}
	if c.LeafValidity < minLeafValidity || c.LeafValidity > maxLeafValidity {
		return fmt.Errorf("leaf_validity: %s out of range %s..%s", c.LeafValidity, minLeafValidity, maxLeafValidity)
	}
	if c.CacheSize < 1 || c.CacheSize > maxCacheSize {
		return fmt.Errorf("cache_size: %d out of range 1..%d", c.CacheSize, maxCacheSize)
	}
	if c.Source != SourceKMS {
		switch {
		case len(c.PermittedDNSDomains) > 0:
			return fmt.Errorf("permitted_dns_domains: only applies when source is %s", SourceKMS)
		case len(c.ExcludedDNSDomains) > 0:
			return fmt.Errorf("excluded_dns_domains: only applies when source is %s", SourceKMS)
		case len(c.PermittedIPRanges) > 0:
			return fmt.Errorf("permitted_ip_ranges: only applies when source is %s", SourceKMS)
		case len(c.ExcludedIPRanges) > 0:
			return fmt.Errorf("excluded_ip_ranges: only applies when source is %s", SourceKMS)
		}
		return nil
	}
	if c.IntermediateValidity < minIntermediateValidity || c.IntermediateValidity > maxIntermediateValidity {
		return fmt.Errorf("intermediate_validity: %s out of range %s..%s", c.IntermediateValidity, minIntermediateValidity, maxIntermediateValidity)
	}
	if c.IntermediateValidity < c.LeafValidity {
		return fmt.Errorf("intermediate_validity: %s shorter than leaf_validity %s", c.IntermediateValidity, c.LeafValidity)
	}
	if len(c.IntermediateCommonName) > 64 {
		return fmt.Errorf("intermediate_common_name: longer than 64 bytes")
	}
	for _, f := range []struct {
		key  string
		list []string
	}{{"permitted_dns_domains", c.PermittedDNSDomains}, {"excluded_dns_domains", c.ExcludedDNSDomains}} {
		for i, d := range f.list {
			if _, err := normalizeConstraint(d); err != nil {
				return fmt.Errorf("%s[%d]: %w", f.key, i, err)
			}
		}
	}
	for _, f := range []struct {
		key  string
		list []netip.Prefix
	}{{"permitted_ip_ranges", c.PermittedIPRanges}, {"excluded_ip_ranges", c.ExcludedIPRanges}} {
		for i, p := range f.list {
			if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
				return fmt.Errorf("%s[%d]: %q is not a valid IPv4 or IPv6 prefix", f.key, i, p)
			}
		}
	}
	return nil
}

// normalizeConstraint normalizes a dNSName constraint: a hostname, or a
// hostname with a leading dot meaning "subdomains only".
func normalizeConstraint(d string) (string, error) {
	dot := strings.HasPrefix(d, ".")
	n, err := NormalizeName(strings.TrimPrefix(d, "."))
	if err != nil {
		return "", err
	}
	if dot {
		n = "." + n
	}
	return n, nil
}

// MinterOptions returns the minter settings of c.
func (c *Config) MinterOptions(log *slog.Logger) MinterOptions {
	return MinterOptions{Validity: c.LeafValidity, CacheSize: c.CacheSize, PerLeafKeys: c.PerLeafKeys, Logger: log}
}

// IntermediateOptions returns the intermediate settings of c.
func (c *Config) IntermediateOptions(log *slog.Logger) IntermediateOptions {
	norm := func(l []string) []string {
		var out []string
		for _, d := range l {
			n, _ := normalizeConstraint(d) // Validate has checked
			out = append(out, n)
		}
		return out
	}
	return IntermediateOptions{
		CommonName:          c.IntermediateCommonName,
		Validity:            c.IntermediateValidity,
		PermittedDNSDomains: norm(c.PermittedDNSDomains),
		ExcludedDNSDomains:  norm(c.ExcludedDNSDomains),
		PermittedIPRanges:   c.PermittedIPRanges,
		ExcludedIPRanges:    c.ExcludedIPRanges,
		Logger:              log,
	}
}

// Open validates cfg and returns its Authority. For source kms it fetches
// the KMS public key, checks it against root_cert_file, mints the first
// per-instance intermediate and keeps renewing it in a goroutine until ctx
// is done, so ctx must live as long as the proxy. awsCfg is used only for
// the secretsmanager and kms sources. log may be nil.
func Open(ctx context.Context, cfg Config, awsCfg aws.Config, log *slog.Logger) (Authority, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	switch cfg.Source {
	case SourceFiles:
		a, err := LoadFiles(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, err
		}
		log.Info("ca: loaded", "source", cfg.Source, "subject", a.Certificate().Subject.String(), "not_after", a.Certificate().NotAfter)
		return a, nil
	case SourceSecretsManager:
		a, err := LoadSecretsManager(ctx, secretsmanager.NewFromConfig(awsCfg), cfg.SecretARN)
		if err != nil {
			return nil, err
		}
		log.Info("ca: loaded", "source", cfg.Source, "subject", a.Certificate().Subject.String(), "not_after", a.Certificate().NotAfter)
		return a, nil
	default: // SourceKMS; Validate rejected anything else
		certs, err := readCertFile(cfg.RootCertFile)
		if err != nil {
			return nil, err
		}
		signer, err := NewKMSSigner(ctx, kms.NewFromConfig(awsCfg), cfg.KMSKeyID)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		im, err := NewIntermediate(ctx, certs[0], signer, cfg.IntermediateOptions(log))
		if err != nil {
			return nil, fmt.Errorf("ca: kms key %s, root %s: %w", cfg.KMSKeyID, cfg.RootCertFile, err)
		}
		go im.Run(ctx)
		c := im.Certificate()
		log.Info("ca: intermediate minted", "source", cfg.Source, "root", certs[0].Subject.String(),
			"subject", c.Subject.String(), "not_after", c.NotAfter, "renew_at", im.RenewAt())
		return im, nil
	}
}
