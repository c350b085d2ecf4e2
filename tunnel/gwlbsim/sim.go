//go:build linux

package gwlbsim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

// Config configures a Sim.
type Config struct {
	// ExtraOption, when set, is appended to every GENEVE header after the
	// three AWS options. Use an unknown non-critical option to prove the
	// appliance returns options it does not understand verbatim.
	ExtraOption *geneve.Option
	// Logger receives debug logs of dropped returns; nil discards.
	Logger *slog.Logger
	// Targets are the appliances' underlay addresses GENEVE is sent to;
	// empty: ApplianceAddr, the Topology's appliance. Further targets
	// must be reachable from the GWLB namespace.
	Targets []netip.Addr
	// HealthCheck, when set, probes every target over HTTP and places
	// new flows on healthy targets only; flows keep their target for
	// their lifetime whatever its health (GWLB's default: no rebalance
	// on failover). Nil: every target is always healthy.
	HealthCheck *HealthCheck
	// FailOpen places new flows over all targets when none is healthy,
	// as GWLB does; false drops them and counts NoHealthyTarget, which
	// lets a test with one appliance see that no new flow reached it.
	FailOpen bool
}

// Stats are the simulator's counters.
type Stats struct {
	Sent            uint64 // GENEVE packets sent to the appliance
	SendErrors      uint64 // packets that could not be sent
	Returned        uint64 // GENEVE packets received back (any)
	Delivered       uint64 // returned packets written on into the VPC
	WrongSource     uint64 // returned from an address other than the appliance's
	WrongSourcePort uint64 // returned from a port other than the flow's GWLB source port (delivered anyway)
	BadGeneve       uint64 // returned packets whose GENEVE header did not parse
	BadInner        uint64 // inner packets (either direction) whose flow could not be parsed
	UnknownFlow     uint64 // returned packets for a flow GWLB never sent
	OptionMismatch  uint64 // returned header differs from the one sent for the flow
	UDPCsumErrors   uint64 // UDP checksum errors counted by the GWLB namespace's kernel
	NoHealthyTarget uint64 // packets of new flows dropped: no healthy target to place them on
}

type counters struct {
	sent, sendErrors, returned, delivered, wrongSource, wrongSourcePort,
	badGeneve, badInner, unknownFlow, optionMismatch, noHealthyTarget atomic.Uint64
}

type simFlow struct {
	ep      *simEndpoint
	target  *target
	srcPort uint16
	cookie  uint32
	hdr     []byte // the header last sent for the flow
}

type simKey struct {
	ep uint64
	k  flow.Key
}

type simEndpoint struct {
	*Endpoint
	tun *os.File
}

// Sim is a running GWLB simulator on a Topology: it carries every packet
// between a VPC's client and server through the appliance as GWLB does,
// and checks what comes back.
type Sim struct {
	topo   *Topology
	cfg    Config
	log    *slog.Logger
	raw    int
	rawMu  sync.Mutex
	conn   *net.UDPConn
	eps    []*simEndpoint
	csum0  uint64
	c      counters
	mu     sync.Mutex
	flows  map[simKey]*simFlow // by endpoint: VPCs overlap
	frags  map[simKey]flow.Key
	wg     sync.WaitGroup
	closed atomic.Bool

	targets []*target
	stop    chan struct{} // closed by Close: ends the health checks
}

// Start opens the tun devices and sockets on topo and starts carrying
// traffic. It installs the VPCs' policy routing, so a Topology serves one
// Sim (the benchmark uses the underlay without a Sim).
func Start(ctx context.Context, topo *Topology, cfg Config) (_ *Sim, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sim{topo: topo, cfg: cfg, log: log, raw: -1,
		flows: make(map[simKey]*simFlow), frags: make(map[simKey]flow.Key), stop: make(chan struct{})}
	addrs := cfg.Targets
	if len(addrs) == 0 {
		addrs = []netip.Addr{ApplianceAddr}
	}
	now := time.Now()
	for _, a := range addrs {
		t := &target{addr: a, since: now}
		// Without health checks every target is healthy from the start.
		t.healthy.Store(cfg.HealthCheck == nil)
		s.targets = append(s.targets, t)
	}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	if s.raw, err = openRaw(topo.GWLB); err != nil {
		return nil, err
	}
	err = topo.GWLB.Do(func() error {
		var lerr error
		s.conn, lerr = net.ListenUDP("udp4", &net.UDPAddr{IP: GWLBAddr.AsSlice(), Port: geneve.Port})
		return lerr
	})
	if err != nil {
		return nil, fmt.Errorf("gwlbsim: listen %s:%d: %w", GWLBAddr, geneve.Port, err)
	}
	_ = s.conn.SetReadBuffer(8 << 20)
	if s.csum0, err = udpCsumErrors(topo.GWLB); err != nil {
		return nil, fmt.Errorf("gwlbsim: %w", err)
	}
	for _, ep := range topo.Endpoints {
		f, err := openTun(ep.VPC)
		if err != nil {
			return nil, err
		}
		se := &simEndpoint{Endpoint: ep, tun: f}
		s.eps = append(s.eps, se)
		l, err := ep.VPC.Netlink().LinkByName(tunName)
		if err == nil {
			err = ep.VPC.Netlink().LinkSetMTU(l, innerMTU)
		}
		if err == nil {
			err = ep.VPC.Netlink().LinkSetUp(l)
		}
		if err == nil {
			err = steerVPC(ep, l.Attrs().Index)
		}
		if err != nil {
			return nil, fmt.Errorf("gwlbsim: netns %s: tun: %w", ep.VPC.Name, err)
		}
	}
	for _, se := range s.eps {
		s.wg.Add(1)
		go s.fromVPC(se)
	}
	s.wg.Add(1)
	go s.fromAppliance()
	if cfg.HealthCheck != nil {
		hc := cfg.HealthCheck.withDefaults()
		for _, t := range s.targets {
			s.wg.Add(1)
			go s.healthLoop(t, hc, s.stop)
		}
	}
	go func() {
		<-ctx.Done()
		_ = s.Close()
	}()
	return s, nil
}

// openTun creates the tun device in ns. The fd is bound to the namespace
// it was opened in, so it keeps working from any thread.
func openTun(ns *NS) (*os.File, error) {
	var f *os.File
	err := ns.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(tunName)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		f = os.NewFile(uintptr(fd), tunName)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gwlbsim: netns %s: open tun: %w", ns.Name, err)
	}
	return f, nil
}

// srcPortFor derives GWLB's per-flow outer source port from the flow.
func srcPortFor(k flow.Key) uint16 {
	return uint16(10000 + k.Hash()%50000)
}

// fromVPC encapsulates every packet the VPC routes to GWLB.
func (s *Sim) fromVPC(ep *simEndpoint) {
	defer s.wg.Done()
	buf := make([]byte, 65536)
	var out, pkt []byte
	for {
		n, err := ep.tun.Read(buf)
		if err != nil {
			if !s.closed.Load() {
				s.log.Error("gwlbsim: tun read", "netns", ep.VPC.Name, "err", err)
			}
			return
		}
		inner := buf[:n]
		var k flow.Key
		info, r := flow.ParsePacket(inner, &k)
		if r != flow.OK {
			s.c.badInner.Add(1)
			continue
		}
		proto := uint16(geneve.ProtoIPv4)
		if info.IPv6 {
			proto = geneve.ProtoIPv6
		}
		f := s.flowFor(ep, k, info)
		if f == nil {
			s.c.noHealthyTarget.Add(1)
			if s.log.Enabled(context.Background(), slog.LevelDebug) {
				s.log.Debug("gwlbsim: no healthy target for new flow", "flow", k, "len", n)
			}
			continue
		}
		s.mu.Lock()
		out = geneve.AppendHeader(out[:0], 0, proto, ep.ID, ep.AttachmentID, f.cookie, s.extra()...)
		f.hdr = append(f.hdr[:0], out...)
		port := f.srcPort
		s.mu.Unlock()
		out = append(out, inner...)
		dst := f.target.addr
		pkt = buildUDP4(pkt, netip.AddrPortFrom(GWLBAddr, port), netip.AddrPortFrom(dst, geneve.Port), out)
		s.rawMu.Lock()
		err = sendRaw(s.raw, pkt, dst)
		s.rawMu.Unlock()
		if err != nil {
			s.c.sendErrors.Add(1)
			continue
		}
		s.c.sent.Add(1)
		f.target.sent.Add(1)
	}
}

func (s *Sim) extra() []geneve.Option {
	if s.cfg.ExtraOption == nil {
		return nil
	}
	return []geneve.Option{*s.cfg.ExtraOption}
}

// flowFor returns the flow state for a packet from ep, creating it with a
// fresh random cookie on a target chosen among the healthy ones. Later
// fragments join their first fragment's flow. It returns nil for a new
// flow when no target can take it.
func (s *Sim) flowFor(ep *simEndpoint, k flow.Key, info flow.Info) *simFlow {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k.IsFragment() {
		if fk, ok := s.frags[simKey{ep.ID, k}]; ok {
			k = fk
		}
	}
	f, ok := s.flows[simKey{ep.ID, k}]
	if !ok {
		t := place(s.targets, k, s.cfg.FailOpen)
		if t == nil {
			return nil
		}
		t.newFlows.Add(1)
		f = &simFlow{ep: ep, target: t, srcPort: srcPortFor(k), cookie: rand.Uint32()}
		s.flows[simKey{ep.ID, k}] = f
	}
	if info.FirstFragment {
		s.frags[simKey{ep.ID, info.FragKey}] = k
	}
	return f
}

func (s *Sim) lookup(ep uint64, k flow.Key) *simFlow {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k.IsFragment() {
		if fk, ok := s.frags[simKey{ep, k}]; ok {
			k = fk
		}
	}
	return s.flows[simKey{ep, k}]
}

// fromAppliance checks every GENEVE packet the appliance sends back and
// hands the inner packet on into its VPC.
func (s *Sim) fromAppliance() {
	defer s.wg.Done()
	buf := make([]byte, 65536)
	var h geneve.Header
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !s.closed.Load() {
				s.log.Error("gwlbsim: underlay read", "err", err)
			}
			return
		}
		s.c.returned.Add(1)
		tgt := s.targetAt(from.Addr().Unmap())
		if tgt == nil {
			s.c.wrongSource.Add(1)
			continue
		}
		inner, r := geneve.Parse(buf[:n], &h)
		if r != geneve.OK {
			s.c.badGeneve.Add(1)
			s.log.Debug("gwlbsim: bad geneve from appliance", "reason", r)
			continue
		}
		var k flow.Key
		if _, r := flow.ParsePacket(inner, &k); r != flow.OK {
			s.c.badInner.Add(1)
			continue
		}
		f := s.lookup(h.EndpointID, k)
		if f == nil {
			s.c.unknownFlow.Add(1)
			s.log.Debug("gwlbsim: return for unknown flow", "flow", k)
			continue
		}
		s.mu.Lock()
		same := bytes.Equal(h.Raw, f.hdr)
		port := f.srcPort
		ep := f.ep
		owner := f.target
		s.mu.Unlock()
		if owner != tgt {
			// GWLB accepts a flow's packets only from the target it
			// placed the flow on.
			s.c.wrongSource.Add(1)
			continue
		}
		if !same {
			s.c.optionMismatch.Add(1)
			s.log.Debug("gwlbsim: options differ", "flow", k)
			continue
		}
		if from.Port() != port {
			s.c.wrongSourcePort.Add(1)
		}
		if _, err := ep.tun.Write(inner); err != nil {
			s.log.Debug("gwlbsim: tun write", "err", err)
			continue
		}
		s.c.delivered.Add(1)
		tgt.returned.Add(1)
	}
}

// Stats returns the counters.
func (s *Sim) Stats() Stats {
	st := Stats{
		Sent: s.c.sent.Load(), SendErrors: s.c.sendErrors.Load(),
		Returned: s.c.returned.Load(), Delivered: s.c.delivered.Load(),
		WrongSource: s.c.wrongSource.Load(), WrongSourcePort: s.c.wrongSourcePort.Load(),
		BadGeneve: s.c.badGeneve.Load(), BadInner: s.c.badInner.Load(),
		UnknownFlow: s.c.unknownFlow.Load(), OptionMismatch: s.c.optionMismatch.Load(),
		NoHealthyTarget: s.c.noHealthyTarget.Load(),
	}
	if v, err := udpCsumErrors(s.topo.GWLB); err == nil && v >= s.csum0 {
		st.UDPCsumErrors = v - s.csum0
	}
	return st
}

// FlowInfo describes a flow the simulator has seen.
type FlowInfo struct {
	Key        flow.Key
	EndpointID uint64
	SrcPort    uint16
	Cookie     uint32
	Target     netip.Addr // the appliance the flow is pinned to
}

// Flows lists the flows the simulator has sent.
func (s *Sim) Flows() []FlowInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]FlowInfo, 0, len(s.flows))
	for sk, f := range s.flows {
		out = append(out, FlowInfo{Key: sk.k, EndpointID: f.ep.ID, SrcPort: f.srcPort, Cookie: f.cookie, Target: f.target.addr})
	}
	return out
}

// RenewCookie gives endpoint's flow k a new cookie, as GWLB does when a 5-tuple is
// reused; packets sent from now on carry it and returns must too. It
// returns the new cookie, or false if the flow is unknown.
func (s *Sim) RenewCookie(endpoint uint64, k flow.Key) (uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.flows[simKey{endpoint, k}]
	if !ok {
		return 0, false
	}
	old := f.cookie
	for f.cookie == old {
		f.cookie = rand.Uint32()
	}
	return f.cookie, true
}

// SendUDP sends payload as a UDP datagram from src (an address of the GWLB
// namespace: GWLBAddr or ForeignAddr) to the appliance's GENEVE port. It
// is for injecting malformed GENEVE or GENEVE from a foreign source.
func (s *Sim) SendUDP(src netip.AddrPort, payload []byte) error {
	pkt := buildUDP4(nil, src, netip.AddrPortFrom(ApplianceAddr, geneve.Port), payload)
	s.rawMu.Lock()
	defer s.rawMu.Unlock()
	if err := sendRaw(s.raw, pkt, ApplianceAddr); err != nil {
		return fmt.Errorf("gwlbsim: send from %s: %w", src, err)
	}
	return nil
}

// Close stops the simulator and closes its devices and sockets; the
// Topology stays.
func (s *Sim) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.stop)
	var errs []error
	if s.conn != nil {
		errs = append(errs, s.conn.Close())
	}
	for _, ep := range s.eps {
		errs = append(errs, ep.tun.Close())
	}
	s.wg.Wait()
	s.rawMu.Lock()
	if s.raw >= 0 {
		errs = append(errs, unix.Close(s.raw))
		s.raw = -1
	}
	s.rawMu.Unlock()
	return errors.Join(errs...)
}
