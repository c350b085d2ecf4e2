//go:build linux

package steer

import (
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
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
	return inns.Do(netns.NsHandle(n.fd), fn)
}
