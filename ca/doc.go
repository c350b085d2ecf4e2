// Package ca is gwlbproxy's certificate authority: it creates and loads the
// CA that the bumping proxy signs leaf certificates with, and mints those
// leaves on demand behind a bounded cache.
//
// The CA is reached through the small [Authority] interface so the source of
// the issuing key can change without touching the minter:
//
//   - files: a root (or intermediate) certificate and PKCS#8 key on local
//     disk, created by [Init] and loaded by [LoadFiles];
//   - secretsmanager: the same PEM material held in an AWS Secrets Manager
//     secret ([LoadSecretsManager]);
//   - kms: the root key never leaves AWS KMS; each instance mints a
//     short-lived in-memory intermediate signed by KMS at start and renews
//     it before expiry ([NewIntermediate]), so no CA private key ever touches
//     the instance's disk.
//
// [Minter] turns an Authority into tls.Certificates for
// tls.Config.GetCertificate: ECDSA P-256 leaves, normalized names, a bounded
// LRU, singleflight against handshake stampedes and renewal before expiry.
//
// Every key in this package is ECDSA P-256: the handshake and minting costs
// are a fraction of RSA's (see /work/shared/notes/proxy-tls.md).
package ca
