package demo

import (
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Namespace is what the demo needs of a network namespace; gwlbsim.NS
// provides it for every namespace of the topology, including the nat-mode
// internet the demo adds beside gwlbsim's own.
type Namespace interface {
	// Do runs f on an OS thread switched into the namespace; sockets f
	// opens keep the namespace.
	Do(f func() error) error
	Netlink() *netlink.Handle
	Handle() netns.NsHandle
}
