package steer

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// nsExec runs functions whose effect depends on the calling thread's network
// namespace (creating sockets, /proc/sys writes) in the steerer's namespace.
// In production fd is -1 and fn runs directly; tests point it at the
// appliance namespace they built.
type nsExec struct{ fd int }

func (n nsExec) do(fn func() error) error {
	if n.fd < 0 {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns get: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(netns.NsHandle(n.fd)); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns set: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it exits with this goroutine
			// instead of serving others in the wrong namespace.
			errc <- ferr
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
