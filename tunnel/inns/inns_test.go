package inns

import (
	"errors"
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
