package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
)

func TestImportSquid(t *testing.T) {
	dir := "../../proxy/policy/squid/testdata/"
	for _, name := range []string{"debian-12-default.conf", "wiki-bump-except-banks.conf", "wiki-peek-splice-terminate.conf", "mixed.conf"} {
		code, out, errs := run(t, "policy", "import-squid", dir+name)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", name, code, errs)
		}
		// What it prints is a config `gwlbproxy check` accepts.
		c, err := config.Parse([]byte(out))
		if err != nil {
			t.Fatalf("%s: output rejected: %v\n%s", name, err, out)
		}
		if len(c.Proxy.Policy.Rules) == 0 || !strings.Contains(out, "# Policy translated from") {
			t.Fatalf("%s: %s", name, out)
		}
		p := filepath.Join(t.TempDir(), "imported.yaml")
		os.WriteFile(p, []byte(out), 0o600)
		if code, _, errs := run(t, "check", "--config", p); code != 0 {
			t.Fatalf("%s: check: %s", name, errs)
		}
	}
	// Nothing translatable: exit 1, the reasons still printed.
	code, out, errs := run(t, "policy", "import-squid", dir+"untranslatable.conf")
	if code != 1 || !strings.Contains(out, "line 3: not translated") || !strings.Contains(errs, "no http_access or ssl_bump line could be translated") {
		t.Fatalf("untranslatable: %d\n%s\n%s", code, out, errs)
	}
	if _, err := config.Parse([]byte(out)); err != nil {
		t.Fatalf("untranslatable output rejected: %v", err)
	}
	// Usage errors.
	if code, _, _ := run(t, "policy", "import-squid"); code != 2 {
		t.Fatalf("no file: %d", code)
	}
	if code, _, _ := run(t, "policy", "import-squid", "/nonexistent/squid.conf"); code != 2 {
		t.Fatalf("missing file: %d", code)
	}
	if code, _, _ := run(t, "policy"); code != 2 {
		t.Fatalf("policy without subcommand: %d", code)
	}
	// A hostile line cannot escape its comment.
	hostile := filepath.Join(t.TempDir(), "hostile.conf")
	os.WriteFile(hostile, []byte("acl x dstdom_regex a\rproxy: {}\u2028\nhttp_access allow all\n"), 0o600)
	code, out, _ = run(t, "policy", "import-squid", hostile)
	if code != 0 {
		t.Fatalf("hostile: %d", code)
	}
	if _, err := config.Parse([]byte(out)); err != nil {
		t.Fatalf("hostile output rejected: %v\n%q", err, out)
	}
}
