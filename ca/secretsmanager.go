package ca

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
)

// SecretsManagerAPI is the part of the AWS Secrets Manager client the
// secretsmanager source uses; *secretsmanager.Client implements it.
type SecretsManagerAPI interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
}

// secretJSON is the JSON form of a CA secret.
type secretJSON struct {
	Certificate string `json:"certificate"`
	PrivateKey  string `json:"private_key"`
	Chain       string `json:"chain"`
}

// LoadSecretsManager loads a CA from the current version of an AWS Secrets
// Manager secret (name or ARN). The secret string is either
//
//   - JSON: {"certificate": PEM, "private_key": PEM, "chain": PEM (optional)},
//     where "certificate" may itself hold the issuing certificate followed by
//     intermediates; or
//   - a PEM bundle: the issuing certificate, any intermediates, and one
//     private key block ("PRIVATE KEY", "EC PRIVATE KEY" or
//     "RSA PRIVATE KEY"), in any order except that the first certificate is
//     the issuing one.
//
// A binary secret is read as a PEM bundle. The same checks as LoadFiles
// apply (CA, certSign, validity, key match). Errors never quote the secret.
func LoadSecretsManager(ctx context.Context, client SecretsManagerAPI, secretID string) (Authority, error) {
	out, err := client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(secretID)})
	if err != nil {
		return nil, fmt.Errorf("ca secret %s: %w", secretID, err)
	}
	var raw []byte
	switch {
	case out.SecretString != nil:
		raw = []byte(*out.SecretString)
	case len(out.SecretBinary) > 0:
		raw = out.SecretBinary
	default:
		return nil, fmt.Errorf("ca secret %s: empty secret", secretID)
	}
	a, err := parseSecret(raw, time.Now())
	clear(raw)
	if err != nil {
		return nil, fmt.Errorf("ca secret %s: %w", secretID, err)
	}
	return a, nil
}

// parseSecret turns a secret's bytes into an Authority.
func parseSecret(raw []byte, now time.Time) (Authority, error) {
	certPEM, keyPEM := raw, raw
	if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '{' {
		var s secretJSON
		if err := json.Unmarshal(t, &s); err != nil {
			// json errors can quote input bytes; keep them out of logs.
			return nil, errors.New("secret starts with '{' but is not valid JSON")
		}
		if s.Certificate == "" || s.PrivateKey == "" {
			return nil, errors.New(`JSON secret needs "certificate" and "private_key"`)
		}
		certPEM = []byte(s.Certificate + "\n" + s.Chain)
		keyPEM = []byte(s.PrivateKey)
		defer clear(keyPEM)
	}
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	signer, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	var rest [][]byte
	for _, c := range certs[1:] {
		rest = append(rest, c.Raw)
	}
	return NewAuthority(certs[0], rest, signer, now)
}
