package tunnel

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel/fastpath"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/udp"
)

// fastSweepEvery is how often the fast path's flow map is swept for flows
// past GWLB's idle timeouts (a full walk of the map).
const fastSweepEvery = 10 * time.Second

// startFastpath loads and attaches the in-kernel datapath as
// cfg.Datapath asks, and logs once which datapath runs and why. Control
// thread (the daemon's namespace).
func (d *Daemon) startFastpath() error {
	if d.cfg.Datapath == DatapathUserspace {
		d.log.Info("tunnel datapath", "datapath", DatapathUserspace, "why", "configured (tunnel.datapath: userspace)")
		return nil
	}
	fp, devs, how, err := d.loadFastpath()
	if err != nil {
		if d.cfg.Datapath == DatapathEBPF {
			return fmt.Errorf("tunnel: datapath ebpf: %w", err)
		}
		d.log.Warn("tunnel datapath", "datapath", DatapathUserspace, "why", "auto: the kernel refused the eBPF datapath: "+err.Error())
		return nil
	}
	d.fp = fp
	d.lastSweep = time.Now()
	d.log.Info("tunnel datapath", "datapath", DatapathEBPF,
		"why", "tunnel.datapath: "+d.cfg.Datapath+"; tc BPF programs loaded and attached",
		"underlay", strings.Join(devs, ","), "attach", how)
	if err := d.watchUnderlays(); err != nil {
		d.log.Warn("tunnel fast path: underlay devices added later will take the userspace path", "err", err)
	}
	return nil
}

// watchUnderlays follows link and address changes so that an underlay
// device added (or given the listen address) after start gets the ingress
// program too, and a device that goes away is forgotten (its ifindex may
// come back as another device). Control thread: the subscriptions are
// opened in the daemon's namespace; the attaching runs there through post.
func (d *Daemon) watchUnderlays() error {
	links := make(chan netlink.LinkUpdate, 256)
	addrs := make(chan netlink.AddrUpdate, 256)
	onErr := func(err error) { d.log.Warn("tunnel fast path: underlay watch", "err", err) }
	if err := netlink.LinkSubscribeWithOptions(links, d.stopped, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to links: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, d.stopped, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to addresses: %w", err)
	}
	// One attach pass queued at a time: bringing up a tunnel pair alone
	// sends several link and address events.
	var queued atomic.Bool
	rescan := func() {
		if queued.CompareAndSwap(false, true) {
			go d.post(func() {
				queued.Store(false)
				d.attachUnderlays()
			})
		}
	}
	go func() {
		for {
			select {
			case u, ok := <-links:
				if !ok {
					return
				}
				if u.Header.Type == unix.RTM_DELLINK {
					ix := int(u.Index)
					go d.post(func() {
						if d.fp != nil {
							d.fp.Detach(ix)
						}
					})
					continue
				}
				if !isTunnelDevice(u.Attrs().Name) {
					rescan()
				}
			case _, ok := <-addrs:
				if !ok {
					return
				}
				rescan()
			case <-d.stopped:
				return
			}
		}
	}()
	return nil
}

// attachUnderlays attaches the ingress program to every underlay device
// that does not have it yet. Control thread.
func (d *Daemon) attachUnderlays() {
	if d.fp == nil {
		return
	}
	links, err := d.underlayLinks()
	if err != nil {
		return // none now (the listen address moved away): nothing to add
	}
	for _, l := range links {
		how, err := d.fp.AttachUnderlay(l.Attrs().Index)
		if err != nil {
			d.log.Error("tunnel fast path not attached to an underlay device: its GENEVE takes the userspace path", "underlay", l.Attrs().Name, "err", err)
			continue
		}
		if how != "" {
			d.log.Info("tunnel fast path attached to an underlay device added after start", "underlay", l.Attrs().Name, "attach", how)
		}
	}
}

func isTunnelDevice(name string) bool {
	return strings.HasPrefix(name, "gwi-") || strings.HasPrefix(name, "gwo-")
}

func (d *Daemon) loadFastpath() (*fastpath.Fastpath, []string, string, error) {
	links, err := d.underlayLinks()
	if err != nil {
		return nil, nil, "", err
	}
	fp, err := fastpath.Load(fastpath.Config{
		Port:           d.cfg.Port,
		TTL:            udp.DefaultTTL,
		AllowedSources: d.cfg.AllowedSources,
		MaxFlows:       d.cfg.Flows.MaxEntries,
		MaxTunnels:     d.cfg.MaxTunnels,
	})
	if err != nil {
		return nil, nil, "", err
	}
	var names []string
	how := ""
	for _, l := range links {
		h, err := fp.AttachUnderlay(l.Attrs().Index)
		if err != nil {
			fp.Close()
			return nil, nil, "", fmt.Errorf("underlay %s: %w", l.Attrs().Name, err)
		}
		names, how = append(names, l.Attrs().Name), h
	}
	return fp, names, how, nil
}

// underlayLinks are the devices GENEVE can arrive on: those holding the
// listen address (IPv4 or IPv6), or, listening on every address, every
// device that is up except loopback and the tunnels' own. Devices added
// later are not covered (their GENEVE takes the userspace path).
func (d *Daemon) underlayLinks() ([]netlink.Link, error) {
	listen := d.cfg.Listen.Unmap()
	family := netlink.FAMILY_V4
	if listen.Is6() {
		family = netlink.FAMILY_V6
	}
	all, err := d.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range all {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.Flags&net.FlagUp == 0 || isTunnelDevice(a.Name) {
			continue
		}
		if l.Type() != "veth" && l.Type() != "device" && l.Type() != "bond" && l.Type() != "vlan" {
			continue // tun, bridges, dummies: no Ethernet GENEVE from GWLB
		}
		if !listen.IsUnspecified() {
			addrs, err := d.nl.AddrList(l, family)
			if err != nil {
				return nil, fmt.Errorf("addresses of %s: %w", a.Name, err)
			}
			has := false
			for _, ad := range addrs {
				if ip, ok := netip.AddrFromSlice(ad.IP); ok && ip.Unmap() == listen {
					has = true
				}
			}
			if !has {
				continue
			}
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no underlay device (Ethernet, up) holds %s", d.cfg.Listen)
	}
	return out, nil
}

// enableFastpath hands a tunnel that just came up (steering in place) to
// the in-kernel datapath. On failure the tunnel stays on the userspace
// path, which is logged.
func (d *Daemon) enableFastpath(t *tunnel) {
	if d.fp == nil {
		return
	}
	err := func() error {
		for _, ix := range []int{t.pair.InIndex, t.pair.OutIndex} {
			if _, err := d.fp.AttachTunnel(ix); err != nil {
				return err
			}
		}
		return d.fp.AddTunnel(t.pair.EndpointID, t.pair.Slot, t.pair.InIndex, t.pair.OutIndex)
	}()
	if err != nil {
		d.fp.Detach(t.pair.InIndex)
		d.fp.Detach(t.pair.OutIndex)
		d.log.Error("tunnel fast path not enabled: the tunnel uses the userspace datapath", "endpoint", "vpce-"+t.hex, "in", t.pair.In, "err", err)
		return
	}
	t.fast.Store(true)
	d.log.Debug("tunnel on the eBPF datapath", "endpoint", "vpce-"+t.hex, "in", t.pair.In)
}

// disableFastpath sends the tunnel's packets back to the userspace path
// (which drops them while the tunnel closes) and detaches the programs.
func (d *Daemon) disableFastpath(t *tunnel) {
	if !t.fast.Swap(false) {
		return
	}
	// Keep the fast path's counts in the tunnel's totals.
	s := d.fp.Tunnel(t.pair.Slot)
	c := &t.ctr[0]
	c.inPackets.Add(s.InPackets)
	c.inBytes.Add(s.InBytes)
	c.outPackets.Add(s.OutPackets)
	c.outBytes.Add(s.OutBytes)
	if err := d.fp.RemoveTunnel(t.pair.EndpointID, t.pair.InIndex, t.pair.OutIndex); err != nil {
		d.log.Error("tunnel fast path removal failed", "endpoint", "vpce-"+t.hex, "err", err)
	}
	d.fp.Detach(t.pair.InIndex)
	d.fp.Detach(t.pair.OutIndex)
}

// lookupFlow finds a return packet's flow: in the tunnel's own table, or
// among the flows the in-kernel datapath learned (packets its egress
// program leaves to userspace: from local sockets, GSO, ICMP errors).
func (d *Daemon) lookupFlow(t *tunnel, k flow.Key, info flow.Info, e *flow.Entry, fe *fastpath.Entry, now time.Time) bool {
	if t.flows.Lookup(k, info, e, now) {
		return true
	}
	if !t.fast.Load() || !d.fp.Lookup(t.pair.EndpointID, k, fe) {
		return false
	}
	e.Key, e.EndpointID, e.GWLB, e.Local, e.LastSeen = k, t.pair.EndpointID, fe.GWLB, fe.Local, fe.Seen
	e.SetHeader(fe.Header)
	return true
}
