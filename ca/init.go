package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// File names written by Init inside its directory.
const (
	CertFileName = "ca.crt"
	KeyFileName  = "ca.key"
)

// InitOptions describes a new root CA. The zero value is usable: every
// empty field takes the default shown.
type InitOptions struct {
	// CommonName of the root's subject; default "gwlbproxy CA".
	CommonName string
	// Organization of the root's subject; default none.
	Organization string
	// Validity of the root; default 10 years.
	Validity time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Owner, if set, owns the key file (mode stays 0600) and, as group,
	// the directory (mode 0750): the service user reads its key without
	// the key's mode being loosened. Nil leaves both to the caller (root).
	Owner *Owner
}

// Owner is a numeric user and group.
type Owner struct{ UID, GID int }

func (o InitOptions) withDefaults() InitOptions {
	if o.CommonName == "" {
		o.CommonName = "gwlbproxy CA"
	}
	if o.Validity <= 0 {
		o.Validity = 10 * 365 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// rootTemplate is the self-signed root for pub. maxPathLen 0 means the root
// signs leaves directly (files/secretsmanager); 1 lets it sign one level of
// intermediates (KMS root above per-instance intermediates).
func rootTemplate(o InitOptions, maxPathLen int) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := o.Now()
	subj := pkix.Name{CommonName: o.CommonName}
	if o.Organization != "" {
		subj.Organization = []string{o.Organization}
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subj,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(o.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}, nil
}

// Init creates a new ECDSA P-256 root CA in dir: ca.crt (PEM, mode 0644) and
// ca.key (PKCS#8 PEM, mode 0600). It refuses to overwrite either file: both
// are created with O_EXCL, and a half-written pair is removed again. The
// root signs leaves directly (path length 0). dir is created (0700) if
// missing.
func Init(dir string, opts InitOptions) error {
	opts = opts.withDefaults()
	certPath := filepath.Join(dir, CertFileName)
	keyPath := filepath.Join(dir, KeyFileName)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("ca init: %s already exists; refusing to overwrite", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("ca init: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("ca init: %w", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("ca init: generate key: %w", err)
	}
	tmpl, err := rootTemplate(opts, 0)
	if err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("ca init: create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("ca init: marshal key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	clear(keyDER)
	defer clear(keyPEM)

	if err := writeExcl(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	if o := opts.Owner; o != nil {
		err := os.Chown(keyPath, o.UID, o.GID)
		if err == nil {
			err = os.Chown(dir, -1, o.GID)
		}
		if err == nil {
			err = os.Chmod(dir, 0o750)
		}
		if err != nil {
			os.Remove(keyPath)
			return fmt.Errorf("ca init: owner: %w", err)
		}
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	if err := writeExcl(certPath, certPEM, 0o644); err != nil {
		os.Remove(keyPath)
		return fmt.Errorf("ca init: %w", err)
	}
	return nil
}

// writeExcl creates path (failing if it exists), writes b, syncs and closes.
// On error the partial file is removed. The mode is set again after
// creation because the umask only ever narrows it, and a certificate should
// stay world-readable.
func writeExcl(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(b)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Export writes the first certificate of certFile to w, as PEM or, with der,
// as raw DER (the form some trust-store tools import). Only the certificate
// is ever read; the key is not touched.
func Export(w io.Writer, certFile string, der bool) error {
	certs, err := readCertFile(certFile)
	if err != nil {
		return fmt.Errorf("ca export: %w", err)
	}
	return WriteCertificate(w, certs[0], der)
}

// WriteCertificate writes c to w as PEM or DER.
func WriteCertificate(w io.Writer, c *x509.Certificate, der bool) error {
	var err error
	if der {
		_, err = w.Write(c.Raw)
	} else {
		err = pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	if err != nil {
		return fmt.Errorf("ca export: %w", err)
	}
	return nil
}

// randomSerial returns a random positive serial number of 128 bits with
// the top bit cleared (127 random bits), so its DER encoding fits 16 bytes
// and CAs' serial-uniqueness rules hold without any state.
func randomSerial() (*big.Int, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	b[0] &= 0x7f
	return new(big.Int).SetBytes(b[:]), nil
}
