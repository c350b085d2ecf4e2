package configs

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const packerPath = "packer/gwlbproxy.pkr.hcl"

// The contract with `make release` and configs/provision.sh (OWNERS.md):
// dist/gwlbproxy_<version>_<arch>.deb, installed by
// `provision.sh <path to the .deb>` run as root.
const (
	debSource   = `"${var.dist_dir}/gwlbproxy_${var.version}_${source.name}.deb"`
	debOnHost   = `/tmp/gwlbproxy_${var.version}_${source.name}.deb`
	provisionSh = "configs/provision.sh"
)

func readPacker(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(packerPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// hclBlock returns the text of the first top-level-or-nested block whose
// header line matches header (a regexp), up to its matching brace.
func hclBlock(t *testing.T, src, header string) string {
	t.Helper()
	loc := regexp.MustCompile(`(?m)^\s*` + header + `\s*\{`).FindStringIndex(src)
	if loc == nil {
		t.Fatalf("%s: no block %q", packerPath, header)
	}
	depth := 0
	for i := loc[1] - 1; i < len(src); i++ {
		switch src[i] {
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				return src[loc[0] : i+1]
			}
		}
	}
	t.Fatalf("%s: block %q not closed", packerPath, header)
	return ""
}

// TestPackerTemplate checks the HCL2 template's contract without Packer:
// the amazon plugin declared, one image per architecture from Canonical's
// Ubuntu LTS images, the .deb `make release` names and the shared
// provisioning script, and no live config or downloads of its own.
func TestPackerTemplate(t *testing.T) {
	src := readPacker(t)
	if _, err := os.Stat("packer/gwlbproxy.json"); err == nil {
		t.Error("the legacy JSON template is back; HCL2 only")
	}
	plugins := hclBlock(t, src, `required_plugins`)
	if !strings.Contains(plugins, `source = "github.com/hashicorp/amazon"`) {
		t.Errorf("required_plugins does not declare the amazon plugin:\n%s", plugins)
	}
	ubuntu := hclBlock(t, src, `variable "ubuntu"`)
	if !strings.Contains(ubuntu, `default     = "24.04"`) || !strings.Contains(ubuntu, `contains(["24.04", "22.04"], var.ubuntu)`) {
		t.Errorf("variable ubuntu: want default 24.04, 22.04 selectable, nothing else:\n%s", ubuntu)
	}
	for arch, ec2arch := range map[string]string{"amd64": "x86_64", "arm64": "arm64"} {
		re := regexp.MustCompile(`(?s)source "source\.amazon-ebs\.ubuntu" \{\s*name\s*=\s*"` + arch + `".*?\n  \}\n`)
		blk := re.FindString(src)
		if blk == "" {
			t.Errorf("no build source named %q", arch)
			continue
		}
		for _, want := range []string{
			`"${local.ubuntu_image[var.ubuntu]}-` + arch + `-server-*"`,
			`architecture        = "` + ec2arch + `"`,
			`owners      = ["099720109477"]`,
			`most_recent = true`,
			`"gwlbproxy:arch"    = "` + arch + `"`,
		} {
			if !strings.Contains(blk, want) {
				t.Errorf("source %s lacks %s", arch, want)
			}
		}
	}
	for _, want := range []string{
		`"24.04" = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04"`,
		`"22.04" = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04"`,
		`source      = ` + debSource,
		`destination = "` + debOnHost + `"`,
		`default = "` + provisionSh + `"`,
		`default     = "dist"`,
		`"sh /tmp/provision.sh ` + debOnHost + `"`,
		`http_tokens                 = "required"`,
	} {
		if !strings.Contains(src, want) {
			t.Errorf("%s lacks %s", packerPath, want)
		}
	}
	code := regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(src, "") // comments may name things
	shell := hclBlock(t, code, `provisioner "shell"`)
	if strings.Contains(code, configPath) {
		t.Errorf("the image must not carry a live %s (user data writes it)", configPath)
	}
	// issue 19: -var suricata=true reaches provision.sh (sudo -E keeps it).
	if !strings.Contains(shell, `environment_vars = ["GWLBPROXY_SURICATA=${var.suricata ? "1" : "0"}"]`) || !strings.Contains(shell, "sudo -E") {
		t.Errorf("the shell provisioner does not pass var.suricata to provision.sh as GWLBPROXY_SURICATA:\n%s", shell)
	}
	if v := hclBlock(t, code, `variable "suricata"`); !strings.Contains(v, "type        = bool") || !strings.Contains(v, "default     = false") {
		t.Errorf("variable suricata: want a bool, false by default:\n%s", v)
	}
	for _, bad := range []string{"apt-get", "apt ", "curl", "wget", "snap ", "pip ", "go install", "git clone", "useradd", "systemctl"} {
		if strings.Contains(shell, bad) {
			t.Errorf("the shell provisioner runs %q itself; installing is provision.sh's job (shared with the boot test)", bad)
		}
	}
}

// TestPackerValidate runs a real Packer ($PACKER_BIN; .ci/validate-configs.sh
// builds 1.9.5 from its Go module, which bundles the amazon builder 1.2.1):
// `fmt -check`, `validate -syntax-only`, and a full `validate` of the
// template without its packer{} block (which would ask `packer init` to
// download the plugin) against the bundled builder, for both Ubuntu
// releases, with the .deb files and provision.sh in place. Broken inputs
// must fail, or the check proves nothing.
func TestPackerValidate(t *testing.T) {
	bin := os.Getenv("PACKER_BIN")
	if bin == "" {
		t.Skip("PACKER_BIN not set (.ci/validate-configs.sh builds Packer 1.9.5 and sets it)")
	}
	abs, err := filepath.Abs(packerPath)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	packer := func(args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "HOME="+work, "PACKER_PLUGIN_PATH="+filepath.Join(work, "plugins"),
			"CHECKPOINT_DISABLE=1", "PACKER_CACHE_DIR="+filepath.Join(work, "cache"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := packer("fmt", "-check", "-diff", abs); err != nil {
		t.Errorf("packer fmt -check: %v\n%s", err, out)
	}
	if out, err := packer("validate", "-syntax-only", abs); err != nil {
		t.Fatalf("packer validate -syntax-only: %v\n%s", err, out)
	}

	src := readPacker(t)
	pk := hclBlock(t, src, `packer`)
	bundled := filepath.Join(work, "gwlbproxy.pkr.hcl")
	if err := os.WriteFile(bundled, []byte(strings.Replace(src, pk, "", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	dist := filepath.Join(work, "dist")
	if err := os.MkdirAll(dist, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, arch := range []string{"amd64", "arm64"} {
		if err := os.WriteFile(filepath.Join(dist, "gwlbproxy_1.2.3_"+arch+".deb"), []byte("!<arch>\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script, err := filepath.Abs(filepath.Join("..", provisionSh))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(script); err != nil {
		t.Logf("%s not in the tree yet; validating with a placeholder", provisionSh)
		script = filepath.Join(work, "provision.sh")
		if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	vars := []string{"-var", "version=1.2.3", "-var", "dist_dir=" + dist, "-var", "provision_script=" + script}
	validate := func(extra ...string) (string, error) {
		return packer(append(append([]string{"validate"}, vars...), append(extra, bundled)...)...)
	}
	for _, release := range []string{"24.04", "22.04"} {
		out, err := validate("-var", "ubuntu="+release)
		if err != nil || !strings.Contains(out, "The configuration is valid") {
			t.Errorf("packer validate (ubuntu %s, bundled amazon builder): %v\n%s", release, err, out)
		}
	}

	if out, err := validate("-var", "suricata=true"); err != nil || !strings.Contains(out, "The configuration is valid") {
		t.Errorf("packer validate -var suricata=true: %v\n%s", err, out)
	}
	if out, err := validate("-var", "ubuntu=20.04"); err == nil {
		t.Errorf("ubuntu=20.04 validated:\n%s", out)
	}
	if err := os.Remove(filepath.Join(dist, "gwlbproxy_1.2.3_arm64.deb")); err != nil {
		t.Fatal(err)
	}
	if out, err := validate(); err == nil || !strings.Contains(out, "gwlbproxy_1.2.3_arm64.deb") {
		t.Errorf("validation passed without the arm64 .deb (%v):\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dist, "gwlbproxy_1.2.3_arm64.deb"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	broken := strings.Replace(src, pk, "", 1)
	broken = strings.Replace(broken, `ssh_username    = "ubuntu"`, `ssh_username    = "ubuntu"`+"\n  ssh_usernam = \"x\"", 1)
	if err := os.WriteFile(bundled, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := validate(); err == nil || !strings.Contains(out, "ssh_usernam") {
		t.Errorf("an unknown builder argument validated (%v):\n%s", err, out)
	}
}
