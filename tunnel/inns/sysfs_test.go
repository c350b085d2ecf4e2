//go:build linux

package inns

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestSysfs: f sees sysfs as the namespace sees it (a link that exists
// only inside it is listed, and its queue attributes are writable), the
// error of f comes back, and the caller's own sysfs is untouched.
func TestSysfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and mounts sysfs")
	}
	n, err := New("insys-" + RandSuffix())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	const link = "insysveth0"
	if err := n.Netlink().LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: link}, PeerName: link + "p"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", link)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("host sysfs shows the namespace's link: %v", err)
	}
	var mounted string
	err = n.Sysfs(func(dir string) error {
		mounted = dir
		if _, err := os.Stat(filepath.Join(dir, "class/net", link)); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "class/net", link, "queues/rx-0/rps_cpus"), []byte("1"), 0o644)
	})
	if err != nil {
		t.Fatalf("Sysfs: %v", err)
	}
	if _, err := os.Stat(mounted); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount point %s left behind: %v", mounted, err)
	}
	want := errors.New("from f")
	if err := n.Sysfs(func(string) error { return want }); !errors.Is(err, want) {
		t.Errorf("Sysfs returned %v, want f's error", err)
	}
}
