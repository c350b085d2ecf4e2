package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/gwlbproxy/gwlbproxy/ca"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
)

func cmdCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"init":   cmdCAInit,
		"export": cmdCAExport,
	}
	if len(args) == 0 || sub[args[0]] == nil {
		if len(args) > 0 && args[0] != "-h" && args[0] != "--help" && args[0] != "help" {
			fmt.Fprintf(stderr, "unknown ca command %q\n", args[0])
		}
		fmt.Fprint(stderr, `usage: gwlbproxy ca <command> [flags]

commands:
  init     create the appliance CA (ECDSA P-256): files in --dir, or a root certificate for a KMS key (--kms)
  export   print the CA certificate (PEM or --der) for client trust stores
`)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return nil
		}
		return errUsage
	}
	return sub[args[0]](ctx, args[1:], stdout, stderr)
}

func cmdCAInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca init", "ca init (--dir DIR | --kms KEY-ID --out FILE [--config FILE]) [--name CN] [--org O] [--validity 87600h]", stderr)
	cfgPath := fs.String("config", config.DefaultPath, "with --kms: config whose aws section (region, imds, endpoints.kms) applies (built-in defaults when the default file does not exist)")
	dir := fs.String("dir", "/etc/gwlbproxy/ca", "directory for ca.crt and ca.key (key mode 0600); existing files are never overwritten")
	kmsKey := fs.String("kms", "", "KMS key id/ARN/alias (ECC_NIST_P256, SIGN_VERIFY): make a root certificate whose key stays in KMS")
	out := fs.String("out", "", "with --kms: file to write the root certificate to (PEM); '-' for stdout")
	name := fs.String("name", "gwlbproxy CA", "subject common name")
	org := fs.String("org", "", "subject organization")
	validity := fs.Duration("validity", 10*365*24*time.Hour, "validity of the root certificate")
	owner := fs.String("owner", "", "user (e.g. gwlbproxy, the unit's User=) that owns ca.key (mode stays 0600) and whose group may enter --dir (0750)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	opts := ca.InitOptions{CommonName: *name, Organization: *org, Validity: *validity}
	if *owner != "" {
		u, err := user.Lookup(*owner)
		if err != nil {
			return fmt.Errorf("--owner: %w", err)
		}
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("--owner %s: non-numeric uid %q or gid %q", *owner, u.Uid, u.Gid)
		}
		opts.Owner = &ca.Owner{UID: uid, GID: gid}
	}
	if *kmsKey == "" {
		if err := ca.Init(*dir, opts); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "created %s (key %s, mode 0600)\n",
			filepath.Join(*dir, ca.CertFileName), filepath.Join(*dir, ca.KeyFileName))
		if *owner != "" {
			fmt.Fprintf(stdout, "key owned by %s\n", *owner)
		}
		return nil
	}
	if *out == "" {
		return errors.New("--kms needs --out FILE (the root certificate clients trust and instances load as ca.root_cert_file)")
	}
	c, err := config.Load(*cfgPath, *cfgPath == config.DefaultPath)
	if err != nil {
		return err
	}
	env, err := awsenv.New(c.AWS, nil)
	if err != nil {
		return err
	}
	awsCfg, err := env.Config(ctx, awsenv.KMS)
	if err != nil {
		return err
	}
	pemBytes, err := ca.InitKMS(ctx, kms.NewFromConfig(awsCfg), *kmsKey, opts)
	if err != nil {
		return err
	}
	if *out == "-" {
		_, err = stdout.Write(pemBytes)
		return err
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(pemBytes); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created %s (root certificate; its key stays in KMS %s)\n", *out, *kmsKey)
	return nil
}

func cmdCAExport(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca export", "ca export [--config FILE | --cert FILE] [--der]", stderr)
	path := fs.String("config", config.DefaultPath, "config whose CA to export (built-in defaults when the default file does not exist)")
	cert := fs.String("cert", "", "certificate file to export instead of the configured one")
	der := fs.Bool("der", false, "write DER instead of PEM")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	file := *cert
	if file == "" {
		c, err := config.Load(*path, *path == config.DefaultPath)
		if err != nil {
			return err
		}
		file = c.CA.CertFile
		if c.CA.Source == ca.SourceKMS {
			file = c.CA.RootCertFile
		}
		if file == "" {
			return fmt.Errorf("ca source %q keeps no certificate file to export; use --cert", c.CA.Source)
		}
	}
	return ca.Export(stdout, file, *der)
}
