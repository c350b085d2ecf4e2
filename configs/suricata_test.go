package configs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/mirror"
)

// TestSuricataInclude (issue 19): the include file for Suricata captures
// the mirror device under its default name with room for a full frame, and
// the installed Suricata accepts it on top of its packaged configuration;
// the systemd drop-in loads it.
func TestSuricataInclude(t *testing.T) {
	inc, err := filepath.Abs("suricata/gwlbproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dropIn, err := os.ReadFile("suricata/gwlbproxy-suricata.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dropIn), "--include /etc/suricata/gwlbproxy.yaml") || !strings.Contains(string(dropIn), "BindsTo=gwlbproxy.service") {
		t.Errorf("drop-in does not load the include or bind to gwlbproxy:\n%s", dropIn)
	}
	bin, err := exec.LookPath("suricata")
	if err != nil {
		t.Skip("suricata not installed (.ci/run installs it from bookworm-backports)")
	}
	if _, err := os.Stat("/etc/suricata/suricata.yaml"); err != nil {
		t.Skip("no packaged /etc/suricata/suricata.yaml")
	}
	dir := t.TempDir()
	rules := filepath.Join(dir, "local.rules")
	os.WriteFile(rules, []byte(`alert http any any -> any any (msg:"t"; http.response_body; content:"x"; sid:1; rev:1;)`+"\n"), 0o644)
	if out, err := exec.Command(bin, "-T", "-c", "/etc/suricata/suricata.yaml", "--include", inc, "-S", rules, "-l", dir).CombinedOutput(); err != nil {
		t.Fatalf("suricata -T: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--dump-config", "-c", "/etc/suricata/suricata.yaml", "--include", inc).Output()
	if err != nil {
		t.Fatalf("suricata --dump-config: %v", err)
	}
	conf := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, " = "); ok {
			conf[k] = v
		}
	}
	def := mirror.DefaultConfig()
	if conf["af-packet.0.interface"] != def.Interface || conf["af-packet.0.checksum-checks"] != "yes" {
		t.Errorf("af-packet.0 is %q (checksum-checks %q), want the mirror device %q with checks on",
			conf["af-packet.0.interface"], conf["af-packet.0.checksum-checks"], def.Interface)
	}
	if conf["default-packet-size"] != "1514" || def.MTU+14 != 1514 {
		t.Errorf("default-packet-size %q for mirror mtu %d", conf["default-packet-size"], def.MTU)
	}
	if conf["outputs.0.eve-log.enabled"] != "yes" || conf["outputs.0.eve-log.types.0"] != "alert" {
		t.Errorf("eve-log alerts not enabled: %v", conf["outputs.0.eve-log.types.0"])
	}
}
