// Package inns is the one owner of network namespace switching: Do runs a
// function inside a namespace, and NS (New) is a named namespace the
// simulator (tunnel/gwlbsim), the demo, the benchmarks and the root tests
// create and tear down, and Sysfs shows sysfs as a namespace sees it.
//
// Why a package: the steerer (pointed at a test's appliance namespace), the
// GWLB simulator, the demo and the benchmarks all need it, and getting it
// wrong is silent: a goroutine left on a thread in the wrong namespace
// opens its sockets there. cmd/internal/nsexec is the one other place that
// enters a namespace: it must not switch back (it execs the program inside
// it), so it opens the namespace with Path and stays.
package inns

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs f on an OS thread switched into namespace h and back. Sockets
// and tun devices f opens belong to h and keep working after Do returns;
// goroutines f starts do not inherit h.
func Do(h netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime discards it when
			// this goroutine exits, so no other goroutine runs in the
			// wrong namespace.
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
