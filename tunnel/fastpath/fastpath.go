//go:build linux

package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
)

// Reasons index Counters: what the programs dropped or passed up. The
// first ones equal tunnel/geneve.Reason.
const (
	ReasonForeignSource = 10 // dropped: source not in allowed_sources
	FirstPass           = 11 // from here on: passed to userspace, not dropped
	PassNotGENEVE       = 11
	PassOuter           = 12 // IP options, fragmented GENEVE, GSO, long header
	PassUnknownEndpoint = 13
	PassInner           = 14 // inner packet not keyed in the kernel
	PassNoFlow          = 15
	PassEgressOther     = 16 // not a tunnel device, too long, pull failed
	ErrHelper           = 17 // a helper failed: dropped
	PassEgressLocal     = 18 // from a local socket: checksum state unknown
	PassEgressGSO       = 19 // GSO super-packet (segmented by userspace)
	PassEgressChecksum  = 20 // IPv6 outer: no UDP checksum derivable without reading the payload
	PassEgressIngress   = 21 // entered from a device that is not a tunnel's: checksum state unknown
	NumReasons          = 22
)

var passNames = [...]string{
	PassNotGENEVE:       "not_geneve",
	PassOuter:           "outer",
	PassUnknownEndpoint: "unknown_endpoint",
	PassInner:           "inner",
	PassNoFlow:          "no_flow",
	PassEgressOther:     "egress_other",
	ErrHelper:           "",
	PassEgressLocal:     "egress_local_socket",
	PassEgressGSO:       "egress_gso",
	PassEgressChecksum:  "egress_checksum",
	PassEgressIngress:   "egress_not_from_tunnel",
}

// ReasonName names a pass reason for stats (IsPass).
func ReasonName(r int) string {
	if IsPass(r) {
		return passNames[r]
	}
	return fmt.Sprintf("reason_%d", r)
}

// IsPass reports whether counter r counts packets passed to userspace
// (not dropped).
func IsPass(r int) bool { return r >= FirstPass && r < NumReasons && r != ErrHelper }

// HeaderMax is the longest GENEVE header the programs carry.
const HeaderMax = 72

// Config configures Load.
type Config struct {
	Port           uint16 // GENEVE port
	TTL            uint8  // outer TTL of returned packets
	AllowedSources []netip.Prefix
	MaxFlows       int // LRU size (tunnel.flows.max_entries)
	MaxTunnels     int // tunnel slots 1..MaxTunnels
}

// Fastpath is the loaded programs and maps.
type Fastpath struct {
	objs fastpathObjects

	mu    sync.Mutex
	links map[attachKey]func() error
}

type attachKey struct {
	ifindex int
	ingress bool
}

// Supported reports why the kernel cannot run the fast path, or nil. It
// loads and unloads the programs, which is the only reliable test.
func Supported() error {
	f, err := Load(Config{Port: 6081, TTL: 64, MaxFlows: 16, MaxTunnels: 1})
	if err != nil {
		return err
	}
	return f.Close()
}

// Load loads the programs and maps into the kernel. A verifier rejection
// is returned with the verifier's log.
func Load(cfg Config) (*Fastpath, error) {
	_ = rlimit.RemoveMemlock() // kernels before 5.11 account BPF memory there
	spec, err := loadFastpath()
	if err != nil {
		return nil, err
	}
	if err := spec.Variables["geneve_port"].Set(cfg.Port); err != nil {
		return nil, fmt.Errorf("fastpath: geneve_port: %w", err)
	}
	if err := spec.Variables["out_ttl"].Set(cfg.TTL); err != nil {
		return nil, fmt.Errorf("fastpath: out_ttl: %w", err)
	}
	spec.Maps["flows"].MaxEntries = uint32(max(cfg.MaxFlows, 16))
	spec.Maps["tstats"].MaxEntries = uint32(cfg.MaxTunnels + 1)
	f := &Fastpath{links: map[attachKey]func() error{}}
	if err := spec.LoadAndAssign(&f.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("fastpath: verifier rejected the programs: %+v", ve)
		}
		return nil, fmt.Errorf("fastpath: load: %w", err)
	}
	for _, p := range cfg.AllowedSources {
		var err error
		if a := p.Masked().Addr(); a.Is4() {
			k := fastpathLpm4{Prefixlen: uint32(p.Bits()), Addr: binary.NativeEndian.Uint32(a.AsSlice())}
			err = f.objs.Allowed4.Put(&k, uint8(1))
		} else if a.Is4In6() {
			// A v4-mapped prefix: GENEVE from it arrives as IPv4.
			k := fastpathLpm4{Prefixlen: uint32(max(p.Bits()-96, 0)), Addr: binary.NativeEndian.Uint32(a.Unmap().AsSlice())}
			err = f.objs.Allowed4.Put(&k, uint8(1))
		} else {
			k := fastpathLpm6{Prefixlen: uint32(p.Bits()), Addr: a.As16()}
			err = f.objs.Allowed6.Put(&k, uint8(1))
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("fastpath: allowed source %s: %w", p, err)
		}
	}
	return f, nil
}

// Close detaches every program and frees the maps.
func (f *Fastpath) Close() error {
	f.mu.Lock()
	var errs []error
	for k, detach := range f.links {
		errs = append(errs, detach())
		delete(f.links, k)
	}
	f.mu.Unlock()
	errs = append(errs, f.objs.Close())
	return errors.Join(errs...)
}

// AttachUnderlay attaches the ingress program to the underlay device
// ifindex (in the calling thread's network namespace). It returns how:
// "tcx" or "clsact".
func (f *Fastpath) AttachUnderlay(ifindex int) (string, error) {
	return f.attach(ifindex, true, f.objs.GeneveIngress)
}

// AttachTunnel attaches the egress program to a gwi-/gwo- device.
func (f *Fastpath) AttachTunnel(ifindex int) (string, error) {
	return f.attach(ifindex, false, f.objs.GeneveEgress)
}

// attach prefers tcx (6.6+: no qdisc, owned by this process's link fd,
// gone when it exits) and falls back to a clsact qdisc with a
// direct-action cls_bpf filter.
func (f *Fastpath) attach(ifindex int, ingress bool, prog *ebpf.Program) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := attachKey{ifindex, ingress}
	if _, ok := f.links[key]; ok {
		return "", nil
	}
	at := ebpf.AttachTCXEgress
	if ingress {
		at = ebpf.AttachTCXIngress
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
	if err == nil {
		f.links[key] = l.Close
		return "tcx", nil
	}
	detach, err2 := attachClsact(ifindex, ingress, prog)
	if err2 != nil {
		return "", fmt.Errorf("fastpath: attach to ifindex %d: tcx: %v; clsact: %w", ifindex, err, err2)
	}
	f.links[key] = detach
	return "clsact", nil
}

func attachClsact(ifindex int, ingress bool, prog *ebpf.Program) (func() error, error) {
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	if err := netlink.QdiscReplace(q); err != nil {
		return nil, fmt.Errorf("clsact qdisc: %w", err)
	}
	parent := uint32(netlink.HANDLE_MIN_EGRESS)
	if ingress {
		parent = netlink.HANDLE_MIN_INGRESS
	}
	flt := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent,
			Handle: netlink.MakeHandle(0, 1), Protocol: unix.ETH_P_ALL, Priority: 1},
		Fd: prog.FD(), Name: "gwlbproxy-fastpath", DirectAction: true,
	}
	if err := netlink.FilterReplace(flt); err != nil {
		return nil, fmt.Errorf("cls_bpf filter: %w", err)
	}
	return func() error {
		err := netlink.FilterDel(flt)
		if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}, nil
}

// Detach removes the program from ifindex, or, for a device that is gone
// (the kernel removed its programs with it), forgets it: its index may
// come back as another device, which must be attached anew.
func (f *Fastpath) Detach(ifindex int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ingress := range []bool{true, false} {
		k := attachKey{ifindex, ingress}
		if d, ok := f.links[k]; ok {
			_ = d()
			delete(f.links, k)
		}
	}
}

// AddTunnel makes the endpoint's traffic take the fast path: ingress
// redirects into inIndex, egress on inIndex and outIndex finds the
// endpoint. The egress program must be attached to both devices first.
func (f *Fastpath) AddTunnel(ep uint64, slot uint16, inIndex, outIndex int) error {
	d := fastpathDev{Endpoint: ep, Slot: uint32(slot)}
	for _, ix := range []int{inIndex, outIndex} {
		if err := f.objs.Devs.Put(uint32(ix), &d); err != nil {
			return fmt.Errorf("fastpath: device %d: %w", ix, err)
		}
	}
	// Clear the slot's counters: a reused slot starts from zero.
	if err := f.resetSlot(slot); err != nil {
		return err
	}
	t := fastpathTunnel{InIfindex: uint32(inIndex), Slot: uint32(slot)}
	if err := f.objs.Endpoints.Put(ep, &t); err != nil {
		return fmt.Errorf("fastpath: endpoint: %w", err)
	}
	return nil
}

func (f *Fastpath) resetSlot(slot uint16) error {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if err := f.objs.Tstats.Put(uint32(slot), make([]fastpathTstat, n)); err != nil {
		return fmt.Errorf("fastpath: tunnel counters: %w", err)
	}
	return nil
}

// RemoveTunnel stops the fast path for the endpoint (its packets go to
// userspace again) and forgets its flows.
func (f *Fastpath) RemoveTunnel(ep uint64, inIndex, outIndex int) error {
	var errs []error
	if err := f.objs.Endpoints.Delete(ep); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	for _, ix := range []int{inIndex, outIndex} {
		if err := f.objs.Devs.Delete(uint32(ix)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	f.sweep(func(k *fastpathFlowKey, _ *fastpathFlow) bool { return k.Endpoint == ep })
	return errors.Join(errs...)
}

// Counters returns the per-reason totals over all CPUs.
func (f *Fastpath) Counters() [NumReasons]uint64 {
	var out [NumReasons]uint64
	var vals []uint64
	for i := range out {
		if f.objs.Reasons.Lookup(uint32(i), &vals) == nil {
			for _, v := range vals {
				out[i] += v
			}
		}
	}
	return out
}

// TunnelStats is one tunnel's fast-path traffic.
type TunnelStats struct {
	InPackets, InBytes, OutPackets, OutBytes uint64
	// Last is the time of the last packet either way (zero if none).
	Last time.Time
}

// Tunnel returns the fast-path counters of slot.
func (f *Fastpath) Tunnel(slot uint16) TunnelStats {
	var vals []fastpathTstat
	var s TunnelStats
	if f.objs.Tstats.Lookup(uint32(slot), &vals) != nil {
		return s
	}
	var last uint64
	for _, v := range vals {
		s.InPackets += v.InPackets
		s.InBytes += v.InBytes
		s.OutPackets += v.OutPackets
		s.OutBytes += v.OutBytes
		last = max(last, v.Last)
	}
	if last > 0 {
		s.Last = monoToTime(last)
	}
	return s
}

// monoNow is the clock bpf_ktime_get_coarse_ns reads.
func monoNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	return uint64(ts.Nano())
}

func monoToTime(ns uint64) time.Time {
	now := monoNow()
	if ns > now {
		return time.Now()
	}
	return time.Now().Add(-time.Duration(now - ns))
}

// Entry is a flow learned by the fast path.
type Entry struct {
	Header []byte // GENEVE header and options, as GWLB sent them last
	GWLB   netip.AddrPort
	Local  netip.Addr
	Seen   time.Time
}

// key converts a userspace flow key. ok is false for keys the fast path
// never learns (fragments).
func key(ep uint64, k flow.Key) (fastpathFlowKey, bool) {
	var bk fastpathFlowKey
	if k.IsFragment() {
		return bk, false
	}
	a, b := k.Endpoints()
	if k.IsIPv6() {
		bk.Lo, bk.Hi, bk.V6 = a.Addr().As16(), b.Addr().As16(), 1
	} else {
		a4, b4 := a.Addr().As4(), b.Addr().As4()
		copy(bk.Lo[:], a4[:])
		copy(bk.Hi[:], b4[:])
	}
	bk.LoPort, bk.HiPort, bk.Proto, bk.Endpoint = a.Port(), b.Port(), k.Proto(), ep
	return bk, true
}

// Lookup finds a flow the ingress program learned, for the userspace
// return path (packets the egress program leaves to it). dst.Header is
// reused.
func (f *Fastpath) Lookup(ep uint64, k flow.Key, dst *Entry) bool {
	bk, ok := key(ep, k)
	if !ok {
		return false
	}
	var v fastpathFlow
	if f.objs.Flows.Lookup(&bk, &v) != nil || v.HdrLen < 8 || v.HdrLen > HeaderMax {
		return false
	}
	var pb [2]byte // GwlbPort holds network-order bytes
	binary.NativeEndian.PutUint16(pb[:], v.GwlbPort)
	port := binary.BigEndian.Uint16(pb[:])
	dst.Header = append(dst.Header[:0], v.Hdr[:v.HdrLen]...)
	if v.V6 != 0 {
		dst.GWLB = netip.AddrPortFrom(netip.AddrFrom16(v.Gwlb), port)
		dst.Local = netip.AddrFrom16(v.Local)
	} else {
		dst.GWLB = netip.AddrPortFrom(netip.AddrFrom4([4]byte(v.Gwlb[:4])), port)
		dst.Local = netip.AddrFrom4([4]byte(v.Local[:4]))
	}
	dst.Seen = monoToTime(v.Seen)
	return true
}

// Sweep deletes flows idle longer than GWLB's timeouts (TCP or other),
// which the LRU alone would keep while there is room. It returns the
// number deleted.
func (f *Fastpath) Sweep(tcp, other time.Duration) int {
	now := monoNow()
	return f.sweep(func(_ *fastpathFlowKey, v *fastpathFlow) bool {
		idle := time.Duration(now - min(now, v.Seen))
		if v.Tcp != 0 {
			return idle > tcp
		}
		return idle > other
	})
}

// sweep deletes the flows del selects. Listing and deleting are two
// steps (a hash map cannot be changed safely under its iterator), so a
// packet may refresh a listed flow in between: deleteIf checks each one
// again first.
func (f *Fastpath) sweep(del func(*fastpathFlowKey, *fastpathFlow) bool) int {
	return f.deleteIf(f.match(del), del)
}

// match lists the keys of the flows del selects.
func (f *Fastpath) match(del func(*fastpathFlowKey, *fastpathFlow) bool) []fastpathFlowKey {
	var k fastpathFlowKey
	var v fastpathFlow
	var victims []fastpathFlowKey
	it := f.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		if del(&k, &v) {
			victims = append(victims, k)
		}
	}
	return victims
}

// deleteIf deletes each of victims that del still selects when read
// again just before its deletion, and returns the number deleted.
//
// Without the second look, a flow that got a packet after match listed
// it was deleted anyway, and its return packets found no flow (dropped)
// until GWLB's next packet relearned it. A race remains: a packet in the
// microseconds between this lookup and the delete. It is bounded to that
// window and only hits flows idle past GWLB's own timeout, which GWLB
// has forgotten too; the next GENEVE packet of the flow learns it again.
// (A BPF hash map has no compare-and-delete.) The lookup, from a system
// call, does not mark the LRU entry as used.
func (f *Fastpath) deleteIf(victims []fastpathFlowKey, del func(*fastpathFlowKey, *fastpathFlow) bool) int {
	var v fastpathFlow
	n := 0
	for i := range victims {
		k := &victims[i]
		if f.objs.Flows.Lookup(k, &v) != nil || !del(k, &v) {
			continue // gone already, or refreshed since match
		}
		if f.objs.Flows.Delete(k) == nil {
			n++
		}
	}
	return n
}

// Flows counts the entries of the flow map (for tests and metrics; it
// walks the map).
func (f *Fastpath) Flows() int {
	var k fastpathFlowKey
	var v fastpathFlow
	n := 0
	it := f.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}
