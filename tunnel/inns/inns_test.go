package inns

import (
	"errors"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// TestDo: f runs in the namespace, its error comes back, and the caller's
// thread never leaves its own namespace.
func TestDo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.New() // switches this thread; switch back at once
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}

	var inside netns.NsHandle
	want := errors.New("from f")
	err = Do(h, func() error {
		var err error
		inside, err = netns.Get()
		if err != nil {
			return err
		}
		return want
	})
	if !errors.Is(err, want) {
		t.Fatalf("Do returned %v, want f's error", err)
	}
	defer inside.Close()
	if !inside.Equal(h) {
		t.Fatalf("f ran in %s, want %s", inside, h)
	}
	now, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer now.Close()
	if !now.Equal(orig) {
		t.Fatalf("caller's thread is in %s after Do, want %s", now, orig)
	}
}

// TestPath: bare names live under Dir (as `ip netns` keeps them); anything
// with a slash is a path and is kept as given.
func TestPath(t *testing.T) {
	for in, want := range map[string]string{
		"owners-x":            "/run/netns/owners-x",
		"/run/netns/owners-x": "/run/netns/owners-x",
		"/proc/1/ns/net":      "/proc/1/ns/net",
		"./rel/ns":            "./rel/ns",
	} {
		if got := Path(in); got != want {
			t.Errorf("Path(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestNewClose: New makes a named namespace with lo up that `ip netns`
// can see, Do runs in it, and Close removes it.
func TestNewClose(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	name := "owners-inns-" + RandSuffix()
	n, err := New(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(Path(name)); err != nil {
		n.Close()
		t.Fatalf("named namespace not under %s: %v", Dir, err)
	}
	lo, err := n.Netlink().LinkByName("lo")
	if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		n.Close()
		t.Fatalf("lo in %s: %v, flags %v", name, err, lo.Attrs().Flags)
	}
	var inside netns.NsHandle
	if err := n.Do(func() (err error) { inside, err = netns.Get(); return }); err != nil {
		n.Close()
		t.Fatal(err)
	}
	same := inside.Equal(n.Handle())
	inside.Close()
	if !same {
		n.Close()
		t.Fatal("Do ran outside the namespace")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(Path(name)); !os.IsNotExist(err) {
		t.Fatalf("%s still there after Close: %v", Path(name), err)
	}
}
