package boottest

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestProvisionSuricata (issue 19) runs configs/provision.sh with
// GWLBPROXY_SURICATA=1 in a fresh copy of the Debian 12 root file system,
// as the Packer template does with -var suricata=true: Suricata 7 comes
// from bookworm-backports (the script adds the suite), the include and
// the systemd drop-in are installed and load (suricata -T inside the
// script and again here), suricata.service is enabled, and the gwlbproxy
// user reads the eve.json Suricata creates in /var/log/suricata, and
// (the directory's default ACL) a file a process with umask 077 creates
// there, as a rotation could. It
// downloads Suricata and its libraries (about 40 MB) from the Debian
// mirror each run, and skips when the mirror cannot be reached.
func TestProvisionSuricata(t *testing.T) {
	requireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	tarPath := rootfsTar(ctx, t)
	deb := releaseDeb(ctx, t)
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := run(ctx, "tar", "--numeric-owner", "-xpf", tarPath, "-C", root); err != nil {
		t.Fatal(err)
	}
	copyFile(t, deb, filepath.Join(root, "var", "tmp", "gwlbproxy.deb"), 0o644)
	copyFile(t, filepath.Join(repoRoot(t), "configs", "provision.sh"), filepath.Join(root, "var", "tmp", "provision.sh"), 0o755)
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil { // apt resolves the mirror
		os.WriteFile(filepath.Join(root, "etc", "resolv.conf"), b, 0o644)
	}
	nspawn := func(script string) (string, error) {
		return run(ctx, "systemd-nspawn", "--register=no", "--keep-unit", "-q", "-P", "-D", root, "sh", "-c", script)
	}
	start := time.Now()
	out, err := nspawn("GWLBPROXY_SURICATA=1 sh /var/tmp/provision.sh /var/tmp/gwlbproxy.deb")
	if err != nil {
		if regexp.MustCompile(`Temporary failure resolving|Could not resolve|Failed to fetch|Unable to connect`).MatchString(out) {
			t.Skipf("provision.sh could not reach the Debian mirror for Suricata: %v", err)
		}
		t.Fatalf("provision.sh with GWLBPROXY_SURICATA=1: %v", err)
	}
	t.Logf("provisioned with Suricata in %s:\n%s", time.Since(start).Round(time.Second), tail(out, 6))
	if !strings.Contains(out, "This is Suricata version 7.") {
		t.Errorf("provisioned Suricata is not 7:\n%s", tail(out, 10))
	}
	for _, p := range []string{"etc/suricata/gwlbproxy.yaml", "etc/systemd/system/suricata.service.d/gwlbproxy.conf",
		"etc/systemd/system/multi-user.target.wants/suricata.service", "etc/systemd/system/multi-user.target.wants/gwlbproxy.service"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("after provisioning: %v", err)
		}
	}
	// The include loads on top of the packaged configuration, and eve.json
	// (created by Suricata itself, from an empty capture) is readable by
	// the service user; so is a file created under umask 077 (without the
	// default ACL it would be 0600 root:root).
	pcap := "\xd4\xc3\xb2\xa1\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\x00\x00\x01\x00\x00\x00"
	if err := os.WriteFile(filepath.Join(root, "var", "tmp", "empty.pcap"), []byte(pcap), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = nspawn(`set -e
echo 'alert http any any -> any any (msg:"boot test"; http.response_body; content:"MARKER"; sid:1900099; rev:1;)' >/var/tmp/t.rules
suricata -T -c /etc/suricata/suricata.yaml --include /etc/suricata/gwlbproxy.yaml -S /var/tmp/t.rules
rm -f /var/log/suricata/eve.json
suricata -c /etc/suricata/suricata.yaml --include /etc/suricata/gwlbproxy.yaml -S /var/tmp/t.rules -r /var/tmp/empty.pcap -l /var/log/suricata
setpriv --reuid gwlbproxy --regid gwlbproxy --clear-groups cat /var/log/suricata/eve.json >/dev/null
echo EVE-READABLE
(umask 077; echo '{}' >/var/log/suricata/eve.json.new)
setpriv --reuid gwlbproxy --regid gwlbproxy --clear-groups cat /var/log/suricata/eve.json.new >/dev/null
echo NEW-READABLE
suricata --dump-config -c /etc/suricata/suricata.yaml --include /etc/suricata/gwlbproxy.yaml | grep '^af-packet.0.interface'`)
	if err != nil {
		t.Fatalf("Suricata in the provisioned image: %v", err)
	}
	if !strings.Contains(out, "EVE-READABLE") || !strings.Contains(out, "NEW-READABLE") ||
		!strings.Contains(out, "af-packet.0.interface = gwlbmirror0") {
		t.Errorf("Suricata in the provisioned image:\n%s", tail(out, 12))
	}
}
