package demo

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Namespace is what the demo needs of a network namespace; gwlbsim.NS and
// the demo's own extra namespace (the nat-mode internet) both provide it.
type Namespace interface {
	// Do runs f on an OS thread switched into the namespace; sockets f
	// opens keep the namespace.
	Do(f func() error) error
	Netlink() *netlink.Handle
	Handle() netns.NsHandle
}

// extraNS is a named namespace the demo adds beside gwlbsim's topology.
type extraNS struct {
	Name string
	h    netns.NsHandle
	nl   *netlink.Handle
}

func (n *extraNS) Handle() netns.NsHandle   { return n.h }
func (n *extraNS) Netlink() *netlink.Handle { return n.nl }

func (n *extraNS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(n.h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", n.Name, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and dies with this goroutine.
			errc <- fmt.Errorf("restore netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// newNamedNS creates /run/netns/name with lo up.
func newNamedNS(name string) (*extraNS, error) {
	var h netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		h, err = netns.NewNamed(name)
		if rerr := netns.Set(orig); rerr != nil {
			errc <- fmt.Errorf("restore netns: %w", rerr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("netns %s: %w", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		_ = netns.DeleteNamed(name)
		return nil, fmt.Errorf("netns %s: netlink: %w", name, err)
	}
	n := &extraNS{Name: name, h: h, nl: nl}
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		_ = n.Close()
		return nil, fmt.Errorf("netns %s: lo up: %w", name, err)
	}
	return n, nil
}

// Close deletes the namespace (and the links in it).
func (n *extraNS) Close() error {
	n.nl.Close()
	n.h.Close()
	if err := netns.DeleteNamed(n.Name); err != nil {
		return fmt.Errorf("netns %s: delete: %w", n.Name, err)
	}
	return nil
}
