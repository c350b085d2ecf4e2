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
// (pidfd_getfd + shutdown, so its accept fails for good) and checks the
// health check turns 503 naming the proxy; a restart heals it. The
// appliance does not re-open a failed listener by itself (see the report),
// so "healed" here means restarted.
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
	rep := waitHealth(t, ctx, e, http.StatusServiceUnavailable, "proxy", false)
	t.Logf("listener broken: status %q, proxy error %q", rep.Status, rep.Checks["proxy"].Error)

	if err := e.App.Stop(30 * time.Second); err != nil {
		t.Logf("stop: %v", err)
	}
	if err := e.StartAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, ctx, e, http.StatusOK, "proxy", true)
	if r := e.Clients[0].Get(ctx, "https://"+demo.HostApp+"/"); r.Err != nil || r.Status != 200 {
		t.Fatalf("after restart: %v %d", r.Err, r.Status)
	}
}
