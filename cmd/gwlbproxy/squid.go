package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy/squid"
)

// cmdImportSquid prints a config fragment (the proxy.policy section)
// translated from a squid.conf, with a comment for every line it could
// not translate. Exit 1 only when nothing at all translated.
func cmdImportSquid(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("policy import-squid", "policy import-squid SQUID.CONF", stderr)
	if err := fs.Parse(args); err != nil {
		return exitCode(2)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitCode(2)
	}
	path := fs.Arg(0)
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintf(stderr, "gwlbproxy policy import-squid: %v\n", err)
		return exitCode(2)
	}
	defer f.Close()
	res, err := squid.Translate(f)
	if err != nil {
		fmt.Fprintf(stderr, "gwlbproxy policy import-squid: %s: %v\n", path, err)
		return exitCode(2)
	}
	out, err := RenderSquid(path, res)
	if err != nil {
		return err
	}
	if _, err := stdout.Write(out); err != nil {
		return err
	}
	if res.Translated == 0 {
		fmt.Fprintf(stderr, "gwlbproxy policy import-squid: %s: no http_access or ssl_bump line could be translated\n", path)
		return exitCode(1)
	}
	return nil
}

// RenderSquid is the fragment: comments, then proxy.policy as YAML that
// `gwlbproxy check` accepts.
func RenderSquid(path string, res squid.Result) ([]byte, error) {
	var doc struct {
		Proxy struct {
			Policy policy.Config `yaml:"policy"`
		} `yaml:"proxy"`
	}
	doc.Proxy.Policy = res.Policy
	body, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, fmt.Errorf("rendering the policy: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Policy translated from %s by `gwlbproxy policy import-squid`.\n", oneLine(path))
	b.WriteString("# Review it, then test decisions with `gwlbproxy policy test`.\n")
	b.WriteString("# Rule names say the squid.conf line they come from.\n")
	if len(res.Notes) > 0 {
		b.WriteString("#\n# Not translated, or translated with a remark:\n")
		for _, n := range res.Notes {
			fmt.Fprintf(&b, "#   %s\n", oneLine(n.String()))
		}
	}
	b.Write(body)
	return b.Bytes(), nil
}

// oneLine keeps hostile input from breaking out of a comment.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == 0x2028 || r == 0x2029 || r == 0x85 {
			return '?'
		}
		return r
	}, s)
}
