package boottest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rootfsPackages are what the image needs beyond minbase: systemd as init,
// dbus for systemctl, and what the .deb depends on or recommends.
var rootfsPackages = []string{"systemd", "systemd-sysv", "dbus", "iproute2", "ca-certificates", "passwd", "procps"}

// requireTools skips the test where it cannot run.
func requireTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("boot test: needs root (mmdebstrap, systemd-nspawn, network namespaces); run as root, e.g. sudo go test ./cmd/internal/boottest")
	}
	for _, tool := range []string{"mmdebstrap", "systemd-nspawn", "nsenter", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("boot test: %s not found (apt-get install mmdebstrap systemd-container; .ci/run installs them)", tool)
		}
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", "..", ".."))
}

func cacheDir(t *testing.T) string {
	t.Helper()
	d := os.Getenv("GWLBPROXY_BOOTTEST_CACHE")
	if d == "" {
		d = filepath.Join(os.TempDir(), "gwlbproxy-boottest-cache")
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// run runs a command with a deadline and returns its combined output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out.String(), 40))
	}
	return out.String(), err
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// rootfsTar returns the cached root file system tarball, building it with
// mmdebstrap on first use (about 20 s and 200 MB of packages from Debian).
func rootfsTar(ctx context.Context, t *testing.T) string {
	t.Helper()
	h := sha256.Sum256([]byte("bookworm minbase " + strings.Join(rootfsPackages, ",")))
	tarPath := filepath.Join(cacheDir(t), "rootfs-bookworm-"+hex.EncodeToString(h[:6])+".tar")
	if _, err := os.Stat(tarPath); err == nil {
		t.Logf("root file system from cache %s", tarPath)
		return tarPath
	}
	t.Logf("building the root file system with mmdebstrap (cached as %s)", tarPath)
	tmp := tarPath + ".tmp" + strconv.Itoa(os.Getpid()) + ".tar"
	start := time.Now()
	if _, err := run(ctx, "mmdebstrap", "--variant=minbase", "--include="+strings.Join(rootfsPackages, ","), "bookworm", tmp); err != nil {
		os.Remove(tmp)
		t.Skipf("boot test: mmdebstrap could not build the root file system (no Debian mirror reachable?): %v", err)
	}
	if err := os.Rename(tmp, tarPath); err != nil {
		t.Fatal(err)
	}
	t.Logf("root file system built in %s", time.Since(start).Round(time.Second))
	return tarPath
}

// releaseDeb returns the .deb to install: GWLBPROXY_DEB, or one built by
// `make release` for this architecture into the cache.
func releaseDeb(ctx context.Context, t *testing.T) string {
	t.Helper()
	if p := os.Getenv("GWLBPROXY_DEB"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("GWLBPROXY_DEB: %v", err)
		}
		return p
	}
	dist := filepath.Join(cacheDir(t), "dist")
	t.Logf("building the .deb with make release ARCHES=%s (set GWLBPROXY_DEB to reuse one)", runtime.GOARCH)
	cmd := exec.CommandContext(ctx, "make", "-C", repoRoot(t), "release", "ARCHES="+runtime.GOARCH, "DIST="+dist)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, tail(string(out), 30))
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "gwlbproxy_*_"+runtime.GOARCH+".deb"))
	if len(debs) != 1 {
		t.Fatalf("make release left %d .deb files for %s in %s", len(debs), runtime.GOARCH, dist)
	}
	return debs[0]
}

// Machine is a booted container.
type Machine struct {
	t    *testing.T
	Root string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	pid1 int // the container's systemd, as the host sees it
}

// Boot starts systemd in root inside network namespace netns and waits
// until the system is up.
func Boot(ctx context.Context, t *testing.T, root, netns string) *Machine {
	t.Helper()
	lf, err := os.Create(filepath.Join(filepath.Dir(root), "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	// CAP_NET_ADMIN (and CAP_BPF, CAP_PERFMON for the eBPF datapath) are
	// not in nspawn's default bounding set, even with a network namespace
	// of its own, and nspawn's seccomp filter refuses bpf(2); an EC2
	// instance's init has all of them.
	cmd := exec.Command("systemd-nspawn", "--register=no", "--keep-unit", "-q", "-D", root,
		"--network-namespace-path=/run/netns/"+netns, "--capability=CAP_NET_ADMIN,CAP_BPF,CAP_PERFMON", "--system-call-filter=bpf", "--console=pipe", "-b")
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &Machine{t: t, Root: root, cmd: cmd, log: lf, done: make(chan struct{})}
	go func() { cmd.Wait(); close(m.done) }()
	t.Cleanup(m.Close)
	deadline := time.Now().Add(60 * time.Second)
	for m.pid1 == 0 {
		if p := findInit(cmd.Process.Pid, 3); p > 0 {
			m.pid1 = p
			break
		}
		select {
		case <-m.done:
			t.Fatalf("systemd-nspawn exited: %s", m.Console(30))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no container init after 60 s: %s", m.Console(30))
		}
	}
	for {
		out, _ := m.Exec(ctx, "systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			t.Logf("container booted (%s), init pid %d on the host", state, m.pid1)
			if state == "degraded" {
				failed, _ := m.Exec(ctx, "systemctl", "--failed", "--no-legend")
				t.Logf("failed units (not ours):\n%s", failed)
			}
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("system not up after 60 s (state %q): %s", state, m.Console(30))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// findInit returns the descendant of pid (at most depth levels down) that
// is pid 1 of its own pid namespace and runs systemd: the container's
// init. nspawn's intermediate processes come and go while it starts.
func findInit(pid, depth int) int {
	if depth == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(b)) {
		c, _ := strconv.Atoi(f)
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c))
		if err != nil {
			continue
		}
		var name, nspid string
		for _, l := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(l, "Name:"); ok {
				name = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
				f := strings.Fields(v)
				nspid = f[len(f)-1]
			}
		}
		if name == "systemd" && nspid == "1" {
			return c
		}
		if p := findInit(c, depth-1); p > 0 {
			return p
		}
	}
	return 0
}

// Exec runs a command inside the booted container (all its namespaces).
func (m *Machine) Exec(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	a := append([]string{"-t", strconv.Itoa(m.pid1), "-m", "-u", "-i", "-n", "-p", "--"}, args...)
	return run(ctx, "nsenter", a...)
}

// MustExec is Exec failing the test on error.
func (m *Machine) MustExec(ctx context.Context, args ...string) string {
	m.t.Helper()
	out, err := m.Exec(ctx, args...)
	if err != nil {
		m.t.Fatal(err)
	}
	return out
}

// Show returns systemctl show properties of unit.
func (m *Machine) Show(ctx context.Context, unit string, props ...string) map[string]string {
	m.t.Helper()
	out := m.MustExec(ctx, "systemctl", "show", unit, "-p", strings.Join(props, ","))
	kv := make(map[string]string)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			kv[k] = v
		}
	}
	return kv
}

// Console returns the last n lines of the container's console.
func (m *Machine) Console(n int) string {
	b, _ := os.ReadFile(m.log.Name())
	return tail(string(b), n)
}

// Close powers the container off (killing nspawn after a deadline).
func (m *Machine) Close() {
	select {
	case <-m.done:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, _ = m.Exec(ctx, "systemctl", "poweroff", "--no-block")
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		m.t.Logf("container did not power off in 30 s; killing systemd-nspawn (pid %d)", m.cmd.Process.Pid)
		_ = m.cmd.Process.Kill()
		<-m.done
	}
	m.log.Close()
}
