package mirror

import (
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Open creates the tap device cfg.Interface (removing a stale one of that
// name), sets its MTU, disables IPv6 on it (no router solicitations or
// addresses of its own), brings it up and starts the writer.
func Open(cfg Config) (*Mirror, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("mirror: netlink: %w", err)
	}
	if old, err := nl.LinkByName(cfg.Interface); err == nil {
		if old.Type() != "tuntap" {
			nl.Close()
			return nil, fmt.Errorf("mirror: interface %s exists and is a %s, not a tap device", cfg.Interface, old.Type())
		}
		nl.LinkDel(old)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("mirror: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(cfg.Interface)
	if err != nil {
		unix.Close(fd)
		nl.Close()
		return nil, fmt.Errorf("mirror: %w", err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		nl.Close()
		return nil, fmt.Errorf("mirror: create tap %s: %w", cfg.Interface, err)
	}
	m := newMirror(cfg, nil)
	m.dev = os.NewFile(uintptr(fd), "/dev/net/tun")
	m.nl = nl
	m.out = fdSink{m.dev}
	fail := func(what string, err error) (*Mirror, error) {
		m.dev.Close()
		if m.link != nil {
			nl.LinkDel(m.link)
		}
		nl.Close()
		return nil, fmt.Errorf("mirror: %s %s: %w", what, cfg.Interface, err)
	}
	if m.link, err = nl.LinkByName(cfg.Interface); err != nil {
		return fail("lookup", err)
	}
	// The device's own address must differ from both synthetic MACs so
	// that every mirrored frame is PACKET_OTHERHOST.
	if err := nl.LinkSetHardwareAddr(m.link, devMAC[:]); err != nil {
		return fail("set address of", err)
	}
	if err := nl.LinkSetMTU(m.link, cfg.MTU); err != nil {
		return fail("set mtu of", err)
	}
	// Best effort: without IPv6 the kernel sends nothing of its own on it.
	os.WriteFile("/proc/sys/net/ipv6/conf/"+cfg.Interface+"/disable_ipv6", []byte("1"), 0)
	if err := nl.LinkSetUp(m.link); err != nil {
		return fail("set up", err)
	}
	m.start()
	return m, nil
}
