package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// KMSAPI is the part of the AWS KMS client the KMS signer uses;
// *kms.Client implements it.
type KMSAPI interface {
	GetPublicKey(ctx context.Context, in *kms.GetPublicKeyInput, optFns ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error)
	Sign(ctx context.Context, in *kms.SignInput, optFns ...func(*kms.Options)) (*kms.SignOutput, error)
}

// DefaultKMSSignTimeout bounds one KMS Sign call made through the
// context-free crypto.Signer interface.
const DefaultKMSSignTimeout = 30 * time.Second

// KMSSigner is a crypto.Signer whose private key is an AWS KMS asymmetric
// key (key spec ECC_NIST_P256, key usage SIGN_VERIFY). It sends SHA-256
// digests to KMS Sign with MessageType DIGEST and ECDSA_SHA_256, and checks
// every signature against the public key before returning it, so a
// misconfigured key or a faulty endpoint cannot yield a bad certificate.
//
// The private key never leaves KMS. Signing is a network call: the
// signer is for the root (a few signatures per instance lifetime), never
// for leaves.
type KMSSigner struct {
	client  KMSAPI
	keyID   string
	pub     *ecdsa.PublicKey
	timeout time.Duration
}

// NewKMSSigner fetches the public key of keyID (a key id, ARN or alias) and
// checks that it is an ECC_NIST_P256 signing key that supports
// ECDSA_SHA_256.
func NewKMSSigner(ctx context.Context, client KMSAPI, keyID string) (*KMSSigner, error) {
	out, err := client.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String(keyID)})
	if err != nil {
		return nil, fmt.Errorf("kms key %s: get public key: %w", keyID, err)
	}
	if out.KeySpec != types.KeySpecEccNistP256 {
		return nil, fmt.Errorf("kms key %s: key spec %q, want %s", keyID, out.KeySpec, types.KeySpecEccNistP256)
	}
	if out.KeyUsage != types.KeyUsageTypeSignVerify {
		return nil, fmt.Errorf("kms key %s: key usage %q, want %s", keyID, out.KeyUsage, types.KeyUsageTypeSignVerify)
	}
	if !slices.Contains(out.SigningAlgorithms, types.SigningAlgorithmSpecEcdsaSha256) {
		return nil, fmt.Errorf("kms key %s: signing algorithms %v lack %s", keyID, out.SigningAlgorithms, types.SigningAlgorithmSpecEcdsaSha256)
	}
	pk, err := x509.ParsePKIXPublicKey(out.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("kms key %s: public key: %w", keyID, err)
	}
	pub, ok := pk.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("kms key %s: public key is %T, want ECDSA P-256", keyID, pk)
	}
	return &KMSSigner{client: client, keyID: keyID, pub: pub, timeout: DefaultKMSSignTimeout}, nil
}

// KeyID is the key identifier the signer was created with.
func (s *KMSSigner) KeyID() string { return s.keyID }

// Public returns the KMS key's public key (*ecdsa.PublicKey).
func (s *KMSSigner) Public() crypto.PublicKey { return s.pub }

// Sign implements crypto.Signer with a DefaultKMSSignTimeout deadline. rand
// is unused: KMS supplies its own randomness.
func (s *KMSSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return s.SignContext(ctx, digest, opts)
}

// SignContext signs a SHA-256 digest with the KMS key and returns an ASN.1
// DER ECDSA signature.
func (s *KMSSigner) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 || len(digest) != 32 {
		return nil, fmt.Errorf("kms key %s: only SHA-256 digests can be signed", s.keyID)
	}
	out, err := s.client.Sign(ctx, &kms.SignInput{
		KeyId:            aws.String(s.keyID),
		Message:          digest,
		MessageType:      types.MessageTypeDigest,
		SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256,
	})
	if err != nil {
		return nil, fmt.Errorf("kms key %s: sign: %w", s.keyID, err)
	}
	if !ecdsa.VerifyASN1(s.pub, digest, out.Signature) {
		return nil, fmt.Errorf("kms key %s: signature does not verify with the key's public key", s.keyID)
	}
	return out.Signature, nil
}

// InitKMS creates the self-signed root certificate for a KMS key and returns
// it as PEM. The root may sign one level of intermediates (path length 1):
// the per-instance intermediates made by NewIntermediate. Nothing is written
// to disk; the lead's `gwlbproxy ca init --kms KEYID` prints or saves it,
// and the result is both what clients trust and the root_cert_file that
// instances load.
func InitKMS(ctx context.Context, client KMSAPI, keyID string, opts InitOptions) ([]byte, error) {
	opts = opts.withDefaults()
	signer, err := NewKMSSigner(ctx, client, keyID)
	if err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	tmpl, err := rootTemplate(opts, 1)
	if err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), ctxSigner{ctx, signer})
	if err != nil {
		return nil, fmt.Errorf("ca init: kms key %s: create certificate: %w", keyID, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// ctxSigner binds a context to a KMSSigner for one CreateCertificate call.
type ctxSigner struct {
	ctx context.Context
	s   *KMSSigner
}

func (c ctxSigner) Public() crypto.PublicKey { return c.s.Public() }
func (c ctxSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return c.s.SignContext(c.ctx, digest, opts)
}

// signerWithContext returns s bound to ctx when it is a KMS signer.
func signerWithContext(ctx context.Context, s crypto.Signer) crypto.Signer {
	if k, ok := s.(*KMSSigner); ok {
		return ctxSigner{ctx, k}
	}
	return s
}

var errNoSigner = errors.New("no root signer")
