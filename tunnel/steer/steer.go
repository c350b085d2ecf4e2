//go:build linux

package steer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/gwlbproxy/gwlbproxy/proxy/ssrf"
	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var _ tunnel.Observer = (*Steerer)(nil)

// Steerer owns the nftables table, policy routing and sysctls that steer
// tunnel traffic into the proxy and replies back into the right tunnel.
type Steerer struct {
	cfg Config
	log *slog.Logger
	ns  nsExec
	reg prometheus.Registerer // for the listener group (ListenAll)

	mu      sync.Mutex // serialises nft batches and routing changes; guards below
	nft     *nftables.Conn
	nl      *netlink.Handle
	rs      *ruleset
	loIndex int
	egress  string
	pairs   map[uint16]tunnel.Pair
	// guard is steer's own SSRF guard (proxy/ssrf's list over its
	// namespace's addresses, refreshed with the sysctl reassertion);
	// DialUpstream checks with it until UseCheck hands in the proxy's
	// check (check), after which the proxy's guard is the only one
	// refreshed.
	guard   atomic.Pointer[ssrf.Guard]
	check   atomic.Pointer[func(netip.Addr) string]
	started bool
	closed  bool
	cancel  context.CancelFunc
	done    chan struct{}

	// testNoZone leaves out the conntrack zone rules (tests prove they
	// are needed).
	testNoZone bool
	// testBadRule adds a rule the kernel refuses (tests prove a refused
	// reload changes nothing).
	testBadRule bool

	kick        chan struct{} // Health found drift: check and repair now
	lastRepair  string        // last repair failure logged (mu)
	ct          atomic.Pointer[ctLookup]
	reasserts   atomic.Uint64
	lastErr     atomic.Pointer[string]
	pairErrors  atomic.Uint64
	sysctlFails atomic.Uint64

	nftRepairs, routingRepairs, repairFailures atomic.Uint64

	// Endpoint of each tunnel slot and gwi-* index, for flow records
	// (flows.go). Kept after PairDown: the destroy events of the flows
	// PairDown flushes arrive after it.
	epBySlot, epByIf sync.Map

	// Rule ids carried in conntrack marks (ruleid.go), and the version
	// of the network policy in force (npVersion, for flow records);
	// domRunning: domainLoop started (mu); rctx: lifetime of the
	// background loops (set by Start), for a domainLoop a reload starts.
	ids        ruleIDs
	npVersion  atomic.Pointer[string]
	domRunning bool
	rctx       context.Context

	// Domain names in network rules (domain.go).
	resolver Resolver
	dom      domains
	domWG    sync.WaitGroup

	// aws is the appliance's AWS environment (ec2.go, SetAWS).
	aws AWSEnv
}

// New validates cfg and prepares a Steerer; nothing is changed in the
// kernel before Start. reg may be nil.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Steerer, error) {
	return newSteerer(cfg, log, reg, -1)
}

func newSteerer(cfg Config, log *slog.Logger, reg prometheus.Registerer, nsFd int) (*Steerer, error) {
	cfg.NetworkPolicy.Rules = append([]NetRule(nil), cfg.NetworkPolicy.Rules...) // validate fills in parsed fields
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.HTTPPorts = append([]uint16(nil), cfg.HTTPPorts...)
	cfg.TLSPorts = append([]uint16(nil), cfg.TLSPorts...)
	cfg.QUICPorts = append([]uint16(nil), cfg.QUICPorts...)
	s := &Steerer{
		cfg:   cfg,
		log:   log.With("component", "steer"),
		ns:    nsExec{fd: nsFd},
		reg:   reg,
		pairs: map[uint16]tunnel.Pair{},
		kick:  make(chan struct{}, 1),
	}
	s.ids.max = cfg.maxRuleID()
	v := cfg.NetworkPolicy.Version()
	s.npVersion.Store(&v)
	g, err := ssrf.New(ssrf.DefaultConfig(), s.ownAddrs)
	if err != nil {
		return nil, fmt.Errorf("steer: ssrf guard: %w", err)
	}
	s.guard.Store(g)
	if reg != nil {
		if err := reg.Register(&collector{s: s}); err != nil {
			return nil, fmt.Errorf("steer metrics: %w", err)
		}
	}
	return s, nil
}

// Start installs the table, base rules and routes and sysctls, and starts
// re-asserting the sysctls and repairing the table, rules and routes (see
// repair.go) every sysctl_interval until Close or ctx ends.
func (s *Steerer) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("steer: already started")
	}
	if s.hasDomains() && s.resolver == nil {
		return errors.New("steer: network_policy has domains but no resolver is configured")
	}
	if err := s.open(); err != nil {
		return err
	}
	lo, err := s.nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("steer: lo: %w", err)
	}
	s.loIndex = lo.Attrs().Index
	if !s.cfg.tunnelMode() {
		s.egress = s.cfg.EgressInterface
		if s.egress == "" {
			if s.egress, err = s.defaultRouteInterface(); err != nil {
				return fmt.Errorf("steer: egress_interface not set and %w", err)
			}
		}
	}
	if _, err := s.applySysctls(s.baseSysctls()); err != nil {
		return fmt.Errorf("steer: %w", err)
	}
	// Leftovers of a crashed run: rules/routes in our range go; the table
	// is replaced atomically below.
	if err := s.sweepRouting(); err != nil {
		s.log.Warn("removing stale routing", "err", err)
	}
	s.rs = s.buildRuleset(s.egress)
	if err := s.rs.install(s.nft); err != nil {
		return fmt.Errorf("steer: nftables: %w", err)
	}
	if err := s.nft.Flush(); err != nil {
		return fmt.Errorf("steer: nftables table %s: %w", s.cfg.TableName, err)
	}
	if s.rs.idsOK {
		s.ids.commit(&s.cfg.NetworkPolicy, s.rs.ids, *s.npVersion.Load())
	}
	rules, routes := s.baseRoutes()
	if err := s.addRouting(rules, routes); err != nil {
		return fmt.Errorf("steer: %w", err)
	}
	s.refreshOwnGuard()
	if s.cfg.DisableSourceDestCheck {
		if err := s.disableSourceDestCheck(ctx); err != nil {
			return fmt.Errorf("steer: disable_source_dest_check: %w", err)
		}
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	s.done = make(chan struct{})
	go s.reassert(rctx, ctx.Done())
	s.rctx = rctx
	s.dom.mu.Lock()
	s.dom.names = map[string]*domainState{}
	for _, r := range s.cfg.NetworkPolicy.Rules {
		for _, n := range r.Domains {
			s.dom.names[n] = &domainState{addrs: map[netip.Addr]time.Time{}}
		}
	}
	s.dom.mu.Unlock()
	if s.hasDomains() {
		s.domRunning = true
		s.domWG.Add(1)
		go s.domainLoop(rctx)
	}
	s.started = true
	s.log.Info("steering installed", "table", s.cfg.TableName, "mode", s.cfg.EgressMode, "egress", s.egress)
	return nil
}

func (s *Steerer) open() error {
	var opts []nftables.ConnOption
	var err error
	if s.ns.fd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(s.ns.fd))
		s.nl, err = netlink.NewHandleAt(netns.NsHandle(s.ns.fd))
	} else {
		s.nl, err = netlink.NewHandle()
	}
	if err != nil {
		return fmt.Errorf("steer: netlink: %w", err)
	}
	opts = append(opts, nftables.AsLasting())
	if s.nft, err = nftables.New(opts...); err != nil {
		return fmt.Errorf("steer: nftables: %w", err)
	}
	ct, err := dialConntrack(s.ns)
	if err != nil {
		return fmt.Errorf("steer: %w", err)
	}
	s.ct.Store(ct)
	return nil
}

// reassert re-applies the sysctls (systemd-sysctl resets them after boot),
// repairs the table, rules and routes if someone else changed them, and
// refreshes the list of the appliance's own addresses.
func (s *Steerer) reassert(ctx context.Context, parent <-chan struct{}) {
	defer close(s.done)
	t := time.NewTicker(s.cfg.SysctlInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-parent:
			return
		case <-t.C:
		case <-s.kick:
		}
		list := s.baseSysctls()
		s.mu.Lock()
		for _, p := range s.pairs {
			list = append(list, pairSysctls(p.In, p.Out)...)
		}
		s.mu.Unlock()
		n, err := s.applySysctls(list)
		if err != nil {
			s.sysctlFails.Add(1)
			msg := err.Error()
			s.lastErr.Store(&msg)
			s.log.Warn("re-asserting sysctls", "err", err)
		} else {
			s.lastErr.Store(nil)
		}
		if n > 0 {
			s.reasserts.Add(uint64(n))
			s.log.Warn("sysctls had been reset; re-asserted", "count", n)
		}
		s.mu.Lock()
		if !s.closed {
			s.selfRepairLocked()
			s.refreshOwnGuard()
		}
		s.mu.Unlock()
	}
}

// UseCheck makes DialUpstream refuse what check refuses: the composition
// root hands in the proxy's SSRF check (proxy.CheckDestination, the guard
// in force, which the proxy refreshes and a policy reload replaces), so
// the proxy and the steering dialer refuse the same list and the
// appliance's own addresses are read by one refresher. check returns a
// non-empty reason to refuse. Call it before the proxy serves. Without it
// steer checks with a guard of its own (built-in list, addresses of its
// namespace, refreshed with the sysctl reassertion).
func (s *Steerer) UseCheck(check func(netip.Addr) string) {
	if check == nil {
		return
	}
	s.check.Store(&check)
}

// checkDestination is the SSRF check DialUpstream makes.
func (s *Steerer) checkDestination(a netip.Addr) string {
	if c := s.check.Load(); c != nil {
		return (*c)(a)
	}
	return s.guard.Load().Check(a)
}

// refreshOwnGuard re-reads the namespace's addresses into steer's own
// guard, unless UseCheck handed in the proxy's (then its owner refreshes).
// Called with s.mu held (s.nl).
func (s *Steerer) refreshOwnGuard() {
	if s.check.Load() != nil {
		return
	}
	if err := s.guard.Load().Refresh(); err != nil {
		s.log.Warn("listing local addresses", "err", err)
	}
}

// ownAddrs lists the addresses of steer's namespace (nothing before Start
// opened the netlink handle). It is the address source of steer's own guard.
func (s *Steerer) ownAddrs() ([]netip.Addr, error) {
	if s.nl == nil {
		return nil, nil
	}
	addrs, err := s.nl.AddrList(nil, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("listing local addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// PairUp adds the tunnel's routing table, rules, sysctls and set elements.
func (s *Steerer) PairUp(ctx context.Context, p tunnel.Pair) error {
	if err := s.pairUp(p); err != nil {
		s.pairErrors.Add(1)
		return fmt.Errorf("steer: pair %s/%s: %w", p.In, p.Out, err)
	}
	s.log.Info("tunnel steered", "in", p.In, "out", p.Out, "slot", p.Slot, "endpoint", fmt.Sprintf("%017x", p.EndpointID))
	return nil
}

func (s *Steerer) pairUp(p tunnel.Pair) error {
	if p.Slot == 0 || int(p.Slot) > s.cfg.MaxTunnels {
		// A larger slot would spill into the rule id bits of the mark.
		return fmt.Errorf("slot %d out of range 1..%d (max_tunnels)", p.Slot, s.cfg.MaxTunnels)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.closed {
		return errors.New("steerer not running")
	}
	if old, ok := s.pairs[p.Slot]; ok && old != p {
		return fmt.Errorf("slot %d already used by %s", p.Slot, old.In)
	}
	if _, err := s.applySysctls(pairSysctls(p.In, p.Out)); err != nil {
		return err
	}
	rules, routes := s.pairRoutes(p)
	if err := s.addRouting(rules, routes); err != nil {
		_ = s.delRouting(rules, routes)
		return err
	}
	// Elements last: only once the route exists do packets get the mark.
	if err := s.nft.SetAddElements(s.rs.sets[setTunnels], []nftables.SetElement{{Key: elemIfIndex(p.InIndex)}}); err != nil {
		return err
	}
	if err := s.nft.SetAddElements(s.rs.sets[mapTunnelMark], []nftables.SetElement{{Key: elemIfIndex(p.InIndex), Val: native32(s.cfg.tunnelMark(p.Slot))}}); err != nil {
		return err
	}
	if err := s.nft.SetAddElements(s.rs.sets[setTunnelMarks], []nftables.SetElement{{Key: native32(s.cfg.tunnelMark(p.Slot))}}); err != nil {
		return err
	}
	if err := s.nft.SetAddElements(s.rs.sets[setTunnelOwner], []nftables.SetElement{{Key: s.cfg.ownerKey(p.InIndex, p.Slot)}}); err != nil {
		return err
	}
	for _, name := range s.npEndpointSetsOf(p.EndpointID) {
		if err := s.nft.SetAddElements(s.rs.sets[name], []nftables.SetElement{{Key: elemIfIndex(p.InIndex)}}); err != nil {
			return err
		}
	}
	if err := s.nft.Flush(); err != nil {
		_ = s.delRouting(rules, routes)
		return fmt.Errorf("nftables elements: %w", err)
	}
	s.pairs[p.Slot] = p
	s.epBySlot.Store(p.Slot, p.EndpointID)
	s.epByIf.Store(p.InIndex, p.EndpointID)
	return nil
}

// PairDown removes what PairUp added.
func (s *Steerer) PairDown(ctx context.Context, p tunnel.Pair) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.closed {
		return nil
	}
	var errs []error
	if _, ok := s.pairs[p.Slot]; ok {
		set, m := s.rs.sets[setTunnels], s.rs.sets[mapTunnelMark]
		if err := s.nft.SetDeleteElements(set, []nftables.SetElement{{Key: elemIfIndex(p.InIndex)}}); err != nil {
			errs = append(errs, err)
		}
		if err := s.nft.SetDeleteElements(m, []nftables.SetElement{{Key: elemIfIndex(p.InIndex)}}); err != nil {
			errs = append(errs, err)
		}
		if err := s.nft.SetDeleteElements(s.rs.sets[setTunnelMarks], []nftables.SetElement{{Key: native32(s.cfg.tunnelMark(p.Slot))}}); err != nil {
			errs = append(errs, err)
		}
		if err := s.nft.SetDeleteElements(s.rs.sets[setTunnelOwner], []nftables.SetElement{{Key: s.cfg.ownerKey(p.InIndex, p.Slot)}}); err != nil {
			errs = append(errs, err)
		}
		for _, name := range s.npEndpointSetsOf(p.EndpointID) {
			if err := s.nft.SetDeleteElements(s.rs.sets[name], []nftables.SetElement{{Key: elemIfIndex(p.InIndex)}}); err != nil {
				errs = append(errs, err)
			}
		}
		if err := s.nft.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("nftables elements: %w", err))
		}
	}
	rules, routes := s.pairRoutes(p)
	if err := s.delRouting(rules, routes); err != nil {
		errs = append(errs, err)
	}
	// The slot's mark goes to the next tunnel: forget this one's flows.
	if ct := s.ct.Load(); ct != nil {
		if err := ct.flushMark(s.cfg.tunnelMark(p.Slot), s.cfg.routeMask()); err != nil {
			errs = append(errs, err)
		}
	}
	delete(s.pairs, p.Slot)
	if err := errors.Join(errs...); err != nil {
		s.pairErrors.Add(1)
		return fmt.Errorf("steer: pair %s/%s down: %w", p.In, p.Out, err)
	}
	s.log.Info("tunnel unsteered", "in", p.In, "slot", p.Slot)
	return nil
}

// Close removes the table, every ip rule and route in our table range. It
// restores nothing else (sysctls stay as set: other tunnels' hosts may rely
// on forwarding).
func (s *Steerer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
		s.domWG.Wait()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	if s.nft != nil && s.started {
		s.nft.DelTable(&nftables.Table{Name: s.cfg.TableName, Family: nftables.TableFamilyINet})
		if err := s.nft.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete table %s: %w", s.cfg.TableName, err))
		}
	}
	if s.nl != nil {
		if s.started {
			if err := s.sweepRouting(); err != nil {
				errs = append(errs, err)
			}
		}
		s.nl.Close()
	}
	if s.nft != nil {
		errs = append(errs, s.nft.CloseLasting())
	}
	if ct := s.ct.Swap(nil); ct != nil {
		errs = append(errs, ct.Close())
	}
	s.pairs = map[uint16]tunnel.Pair{}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("steer: close: %w", err)
	}
	return nil
}

// Health is nil while the table (chains, rule counts, set elements,
// counters), the ip rules and routes are as installed and the last sysctl
// pass succeeded. When it finds something missing it asks for a repair at
// once rather than at the next sysctl_interval; the repair runs in the
// background and a later call is green again.
func (s *Steerer) Health() error {
	s.mu.Lock()
	if !s.started || s.closed {
		s.mu.Unlock()
		return errors.New("steer: not running")
	}
	d, err := s.checkLocked()
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("steer: checking the kernel: %w", err)
	}
	if !d.empty() {
		s.kickRepair()
		return fmt.Errorf("steer: altered by someone else, repairing: %s", d)
	}
	if e := s.lastErr.Load(); e != nil {
		return fmt.Errorf("steer: %s", *e)
	}
	return nil
}

// Counter is one nftables counter.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Stats is the JSON-able state of steering.
type Stats struct {
	Mode             string             `json:"mode"`
	Egress           string             `json:"egress,omitempty"`
	Tunnels          int                `json:"tunnels"`
	Counters         map[string]Counter `json:"counters"`
	SysctlReasserted uint64             `json:"sysctl_reasserted"`
	SysctlFailures   uint64             `json:"sysctl_failures"`
	PairErrors       uint64             `json:"pair_errors"`
	// NFTRepairs counts reinstalls of the table after someone else
	// removed or changed it (its counters restart from zero each time);
	// RoutingRepairs counts passes that put back missing ip rules or
	// routes; RepairFailures counts checks or repairs that failed.
	NFTRepairs     uint64 `json:"nft_repairs"`
	RoutingRepairs uint64 `json:"routing_repairs"`
	RepairFailures uint64 `json:"repair_failures"`
	// Domains is the state of domain names in network rules (absent
	// without any).
	Domains *DomainStats `json:"domains,omitempty"`
}

// Stats reads the counter objects from the kernel.
func (s *Steerer) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Mode: s.cfg.EgressMode, Egress: s.egress, Tunnels: len(s.pairs)}
	st.SysctlReasserted = s.reasserts.Load()
	st.SysctlFailures = s.sysctlFails.Load()
	st.PairErrors = s.pairErrors.Load()
	st.NFTRepairs = s.nftRepairs.Load()
	st.RoutingRepairs = s.routingRepairs.Load()
	st.RepairFailures = s.repairFailures.Load()
	st.Domains = s.domainStats()
	// Under mu: a netlink query must not interleave with a batch being
	// flushed (PairUp, repair) on the same socket.
	if s.started && !s.closed {
		st.Counters, _ = s.counters()
	}
	return st
}

func (s *Steerer) counters() (map[string]Counter, error) {
	objs, err := s.nft.GetNamedObjects(&nftables.Table{Name: s.cfg.TableName, Family: nftables.TableFamilyINet})
	if err != nil {
		return nil, fmt.Errorf("steer: counters: %w", err)
	}
	out := make(map[string]Counter, len(objs))
	for _, o := range objs {
		no, ok := o.(*nftables.NamedObj)
		if !ok {
			continue
		}
		if c, ok := no.Obj.(*expr.Counter); ok {
			out[no.Name] = Counter{Packets: c.Packets, Bytes: c.Bytes}
		}
	}
	return out, nil
}

// collector exports the nft counters and steering state to Prometheus,
// reading the kernel at scrape time.
type collector struct{ s *Steerer }

var (
	descPackets   = prometheus.NewDesc("gwlbproxy_steer_packets_total", "Packets counted by the steering nftables table.", []string{"counter"}, nil)
	descBytes     = prometheus.NewDesc("gwlbproxy_steer_bytes_total", "Bytes counted by the steering nftables table.", []string{"counter"}, nil)
	descTunnels   = prometheus.NewDesc("gwlbproxy_steer_tunnels", "Tunnel pairs currently steered.", nil, nil)
	descReasserts = prometheus.NewDesc("gwlbproxy_steer_sysctl_reasserted_total", "Sysctl values found reset and written again.", nil, nil)
	descPairErrs  = prometheus.NewDesc("gwlbproxy_steer_pair_errors_total", "Failed PairUp/PairDown calls.", nil, nil)
	descRepairs   = prometheus.NewDesc("gwlbproxy_steer_repairs_total", "Steering found altered by someone else and put back, by what was repaired (nftables: the table was reinstalled; routing: ip rules or routes were added back).", []string{"what"}, nil)
	descRepairErr = prometheus.NewDesc("gwlbproxy_steer_repair_failures_total", "Failed steering checks or repairs.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descTunnels, descReasserts, descPairErrs, descRepairs, descRepairErr} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	for name, v := range st.Counters {
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(v.Packets), name)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(v.Bytes), name)
	}
	ch <- prometheus.MustNewConstMetric(descTunnels, prometheus.GaugeValue, float64(st.Tunnels))
	ch <- prometheus.MustNewConstMetric(descReasserts, prometheus.CounterValue, float64(st.SysctlReasserted))
	ch <- prometheus.MustNewConstMetric(descPairErrs, prometheus.CounterValue, float64(st.PairErrors))
	ch <- prometheus.MustNewConstMetric(descRepairs, prometheus.CounterValue, float64(st.NFTRepairs), "nftables")
	ch <- prometheus.MustNewConstMetric(descRepairs, prometheus.CounterValue, float64(st.RoutingRepairs), "routing")
	ch <- prometheus.MustNewConstMetric(descRepairErr, prometheus.CounterValue, float64(st.RepairFailures))
}
