package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Authority is a CA that can sign leaf certificates.
//
// Implementations must be safe for concurrent use. An Authority whose issuing
// certificate changes over time (the KMS-backed intermediate) also implements
// [Snapshotter] so a caller can read certificate, chain and signer as one
// consistent set.
type Authority interface {
	// Certificate is the issuing certificate (root or intermediate).
	Certificate() *x509.Certificate
	// Chain holds the DER certificates to send after the leaf:
	// the issuing certificate when it is an intermediate, then any further
	// intermediates, never a self-signed root.
	Chain() [][]byte
	// Signer signs the leaf (a local key, or a KMS-backed signer).
	Signer() crypto.Signer
}

// Snapshotter is implemented by authorities that rotate their issuing
// certificate. Current returns an immutable Authority whose three methods
// agree with each other; the minter calls it once per leaf so a rotation
// between Certificate() and Signer() cannot produce a leaf that does not
// verify.
type Snapshotter interface {
	Current() Authority
}

// current returns a consistent view of a.
func current(a Authority) Authority {
	if s, ok := a.(Snapshotter); ok {
		return s.Current()
	}
	return a
}

// static is an immutable Authority.
type static struct {
	cert   *x509.Certificate
	chain  [][]byte
	signer crypto.Signer
}

func (s *static) Certificate() *x509.Certificate { return s.cert }
func (s *static) Chain() [][]byte                { return s.chain }
func (s *static) Signer() crypto.Signer          { return s.signer }

// NewAuthority builds an immutable Authority from an issuing certificate,
// the intermediates above it (DER, self-signed roots are dropped) and its
// key. It checks that cert is a usable CA at now and that signer's public
// key matches it.
func NewAuthority(cert *x509.Certificate, intermediates [][]byte, signer crypto.Signer, now time.Time) (Authority, error) {
	if err := checkIssuer(cert, now); err != nil {
		return nil, err
	}
	if err := checkKeyMatch(cert, signer); err != nil {
		return nil, err
	}
	var chain [][]byte
	if !isSelfSigned(cert) {
		chain = append(chain, cert.Raw)
	}
	for i, der := range intermediates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("chain certificate %d: %w", i+1, err)
		}
		if isSelfSigned(c) {
			continue // roots are the client's trust anchor; never sent
		}
		chain = append(chain, c.Raw)
	}
	return &static{cert: cert, chain: chain, signer: signer}, nil
}

// LoadFiles loads a CA from a PEM certificate file and a PEM private key
// file. The certificate file holds the issuing certificate first, optionally
// followed by intermediates. The key may be PKCS#8 ("PRIVATE KEY") or SEC1
// ("EC PRIVATE KEY").
//
// It refuses a key file readable by group or others, a key that does not
// match the certificate, a certificate that is not a CA allowed to sign
// certificates, and a certificate that is expired or not yet valid. Errors
// name the offending file; key bytes are never included in errors.
func LoadFiles(certFile, keyFile string) (Authority, error) {
	certs, err := readCertFile(certFile)
	if err != nil {
		return nil, err
	}
	signer, err := readKeyFile(keyFile)
	if err != nil {
		return nil, err
	}
	var rest [][]byte
	for _, c := range certs[1:] {
		rest = append(rest, c.Raw)
	}
	a, err := NewAuthority(certs[0], rest, signer, time.Now())
	if err != nil {
		return nil, fmt.Errorf("ca %s, key %s: %w", certFile, keyFile, err)
	}
	return a, nil
}

func readCertFile(certFile string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("ca certificate: %w", err)
	}
	certs, err := parseCertsPEM(b)
	if err != nil {
		return nil, fmt.Errorf("ca certificate %s: %w", certFile, err)
	}
	return certs, nil
}

// readKeyFile opens the key file, checks its mode on the open descriptor
// (no window between check and read) and parses it.
func readKeyFile(keyFile string) (crypto.Signer, error) {
	f, err := os.Open(keyFile)
	if err != nil {
		return nil, fmt.Errorf("ca key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("ca key %s: %w", keyFile, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("ca key %s: not a regular file", keyFile)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("ca key %s: mode %04o lets group or others read it; chmod 600 it", keyFile, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("ca key %s: %w", keyFile, err)
	}
	signer, err := parseKeyPEM(b)
	clear(b)
	if err != nil {
		return nil, fmt.Errorf("ca key %s: %w", keyFile, err)
	}
	return signer, nil
}

// parseCertsPEM returns every CERTIFICATE block of b, in order. Other block
// types are ignored so a bundle may also hold the key.
func parseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return certs, nil
}

// parseKeyPEM returns the single private key in b. Errors never quote the
// input.
func parseKeyPEM(b []byte) (crypto.Signer, error) {
	var found crypto.Signer
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("encrypted private keys are not supported")
		default:
			continue
		}
		clear(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s block: %w", blk.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s block: key type %T cannot sign", blk.Type, k)
		}
		if found != nil {
			return nil, errors.New("more than one private key")
		}
		found = s
	}
	if found == nil {
		return nil, errors.New("no PEM private key block")
	}
	return found, nil
}

// checkIssuer reports why c cannot issue certificates at now.
func checkIssuer(c *x509.Certificate, now time.Time) error {
	if !c.BasicConstraintsValid || !c.IsCA {
		return fmt.Errorf("certificate %q is not a CA (basic constraints CA:TRUE missing)", c.Subject)
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("certificate %q lacks key usage certSign", c.Subject)
	}
	if now.After(c.NotAfter) {
		return fmt.Errorf("certificate %q expired at %s", c.Subject, c.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("certificate %q is not valid before %s", c.Subject, c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// checkKeyMatch reports whether signer holds the key of c.
func checkKeyMatch(c *x509.Certificate, signer crypto.Signer) error {
	if signer == nil {
		return errors.New("no signing key")
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(c.PublicKey) {
		return fmt.Errorf("private key does not match certificate %q", c.Subject)
	}
	return nil
}

// isSelfSigned reports whether c is a self-issued certificate whose
// signature verifies with its own key (a root).
func isSelfSigned(c *x509.Certificate) bool {
	if !bytes.Equal(c.RawIssuer, c.RawSubject) {
		return false
	}
	return c.CheckSignatureFrom(c) == nil
}
