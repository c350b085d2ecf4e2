package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// listenerFD finds the appliance's fd of the TCP listener on
// 127.0.0.1:port (its socket inode in /proc/<pid>/net/tcp, then the fd
// pointing at it).
func listenerFD(pid int, port uint16) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return -1, err
	}
	want := fmt.Sprintf("0100007F:%04X", port)
	inode := ""
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == want && f[3] == "0A" { // TCP_LISTEN
			inode = f[9]
		}
	}
	if inode == "" {
		return -1, fmt.Errorf("no listener on 127.0.0.1:%d", port)
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return -1, err
	}
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); l == "socket:["+inode+"]" {
			return strconv.Atoi(e.Name())
		}
	}
	return -1, fmt.Errorf("no fd for socket inode %s", inode)
}

// TestHealthProxyListener breaks the proxy's TLS listener from outside
// (pidfd_getfd + shutdown, so its accept fails for good): the appliance
// re-opens it by itself and serves again without a restart; while it is
// down the health check answers 503 naming the proxy. The re-open is
// quick (first attempt after 0 ms), so the test requires the re-open
// (stats, metric, log) and a working request, and logs whether it caught
// the 503.
func TestHealthProxyListener(t *testing.T) {
	e := newEnv(t, steer.EgressNAT, nil, false)
	ctx := testCtx(t, 3*time.Minute)
	waitHealth(t, ctx, e, http.StatusOK, "proxy", true)

	port := steer.DefaultConfig().TLSListenPort
	fd, err := listenerFD(e.App.PID(), port)
	if err != nil {
		t.Fatal(err)
	}
	pidfd, err := unix.PidfdOpen(e.App.PID(), 0)
	if err != nil {
		t.Skipf("pidfd_open: %v (kernel without pidfd support)", err)
	}
	defer unix.Close(pidfd)
	dup, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		t.Skipf("pidfd_getfd: %v", err)
	}
	// shutdown on a listening socket makes every pending and future
	// accept fail with EINVAL: the listener is broken, not just busy.
	if err := unix.Shutdown(dup, unix.SHUT_RD); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	unix.Close(dup)
	// Only the failure of an accept tells the proxy; a client makes one.
	_ = e.Clients[0].Get(testCtx(t, 10*time.Second), "https://"+demo.HostApp+"/")
	saw503 := ""
	waitFor(t, 90*time.Second, "listener re-opened and health 200", func() (bool, string) {
		c, r, err := e.Health(ctx)
		if err != nil {
			return false, err.Error()
		}
		cr := r.Checks["proxy"]
		if c == http.StatusServiceUnavailable && !cr.OK && saw503 == "" {
			saw503 = cr.Error
		}
		st, _ := cr.Stats.(map[string]any)
		n, _ := st["listener_reopens"].(float64)
		return c == http.StatusOK && cr.OK && n == 1, fmt.Sprintf("%d ok=%v error=%q listener_reopens=%v", c, cr.OK, cr.Error, n)
	})
	if saw503 != "" {
		t.Logf("listener broken: 503, proxy error %q", saw503)
	} else {
		t.Logf("re-opened before this test's probe saw the 503")
	}
	if !e.App.LogContains("proxy listener re-opened") {
		t.Error("no re-open logged")
	}
	m, err := e.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v := m["gwlbproxy_proxy_listener_reopens_total"]; v != 1 {
		t.Errorf("gwlbproxy_proxy_listener_reopens_total = %v, want 1", v)
	}
	if _, err := listenerFD(e.App.PID(), port); err != nil {
		t.Errorf("after the re-open: %v", err)
	}
	if r := e.Clients[0].Get(ctx, "https://"+demo.HostApp+"/"); r.Err != nil || r.Status != 200 {
		t.Fatalf("after the re-open: %v %d", r.Err, r.Status)
	}
}
