//go:build linux

// Package tunnel terminates GWLB's GENEVE tunnels: it decapsulates packets
// into a pair of tun interfaces per GWLB endpoint (gwi-<X> in, gwo-<X>
// out, gwlbtun's names), remembers each flow's GENEVE header, and
// re-encapsulates whatever the kernel routes back into either interface
// with the header of the newest packet GWLB sent for that flow.
//
// The data path is batch-first: each worker owns one SO_REUSEPORT UDP
// socket (recvmmsg) and one queue on every tun device, and every tun queue
// has a reader that sends replies in batches (sendmmsg on a raw socket, the
// only way to reply from GWLB's original source port). Per-packet work
// allocates nothing.
//
// Everything that binds to a network namespace (sockets, tun devices,
// netlink, hook processes, Observer calls) is done by the goroutine that
// called Run, which locks itself to its OS thread: the daemon lives in the
// namespace of the thread that calls Run. Production just calls Run;
// tests call it from a thread switched into a test namespace.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/fastpath"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/udp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
)

// heartbeatStale is how long a worker may go without completing a loop
// before Health reports it (workers wake at least every second).
const heartbeatStale = 10 * time.Second

// Daemon is the tunnel handler. Create it with New and start it with Run.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	obs      Observer
	nworkers int

	tunnels atomic.Pointer[map[uint64]*tunnel]
	mu      sync.Mutex // serialises changes to tunnels, slots and createQ
	slots   []bool     // slots[i]: slot i in use (index 0 unused)
	createQ []*tunnel  // new tunnels for the control loop to bring up
	wake    chan struct{}
	ctl     chan func() // work for the control thread
	stopped chan struct{}
	ready   chan struct{}

	nl      *netlink.Handle // control thread only
	workers []*worker
	started atomic.Bool
	running atomic.Bool
	// offloadWarned: the kernel's refusal of tun offloads was logged.
	offloadWarned atomic.Bool
	// fp is the in-kernel datapath, nil when packets take the userspace
	// path only. Set by Run before the workers start.
	fp        *fastpath.Fastpath
	lastSweep time.Time // control thread

	created, destroyed, failures, hookFailures, pendingQueued atomic.Uint64
}

// New validates cfg and returns a daemon that does nothing until Run. reg
// may be nil (no metrics) and obs may be nil (no steering).
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer, obs Observer) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tunnel config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Daemon{
		cfg:      cfg,
		log:      log,
		obs:      obs,
		nworkers: cfg.workers(runtime.NumCPU()),
		slots:    make([]bool, cfg.MaxTunnels+1),
		wake:     make(chan struct{}, 1),
		ctl:      make(chan func(), 64),
		stopped:  make(chan struct{}),
		ready:    make(chan struct{}),
	}
	empty := map[uint64]*tunnel{}
	d.tunnels.Store(&empty)
	for i := 0; i < d.nworkers; i++ {
		d.workers = append(d.workers, &worker{id: i, d: d, done: make(chan struct{})})
	}
	if reg != nil {
		if err := reg.Register(newCollector(d)); err != nil {
			return nil, fmt.Errorf("tunnel metrics: %w", err)
		}
	}
	return d, nil
}

// Ready is closed once Run has bound its sockets and packets flow.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Run binds the GENEVE sockets in the calling thread's network namespace,
// runs the workers and the control loop, and returns once ctx is done and
// every tunnel has been destroyed: DESTROY hooks run, Observer.PairDown
// called, interfaces removed. It returns early with an error if the
// sockets cannot be opened. Run may be called once.
func (d *Daemon) Run(ctx context.Context) error {
	if !d.started.CompareAndSwap(false, true) {
		return errors.New("tunnel: Run called twice")
	}
	defer close(d.stopped)
	// Pin the control loop to this thread: tun devices, netlink sockets,
	// raw sockets and hook processes all take the thread's namespace.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	nl, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("tunnel: netlink: %w", err)
	}
	d.nl = nl
	defer nl.Close()

	listen := netip.AddrPortFrom(d.cfg.Listen, d.cfg.Port)
	var opened []*worker
	closeAll := func() {
		for _, w := range opened {
			w.conn.Close()
			w.raw.Close()
		}
	}
	for _, w := range d.workers {
		raw, err := udp.NewRawSender()
		if err != nil {
			closeAll()
			return fmt.Errorf("tunnel: %w", err)
		}
		conn, err := udp.Listen(ctx, udp.ListenConfig{Addr: listen, Batch: d.cfg.Batch, ReadBuffer: d.cfg.SocketBuffer})
		if err != nil {
			raw.Close()
			closeAll()
			return fmt.Errorf("tunnel: %w", err)
		}
		w.conn, w.raw = conn, raw
		opened = append(opened, w)
	}
	if err := d.startFastpath(); err != nil {
		closeAll()
		return err
	}
	for _, w := range d.workers {
		w.lastLoop.Store(time.Now().UnixNano())
		go w.run()
	}
	d.running.Store(true)
	close(d.ready)
	d.log.Info("tunnel listening", "addr", listen, "workers", d.nworkers, "mtu", d.cfg.MTU)

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-d.wake:
			d.drainCreates()
		case f := <-d.ctl:
			f()
		case now := <-tick.C:
			d.housekeep(now)
		}
	}

	// Shutdown: stop receiving, then take every tunnel down in order.
	d.running.Store(false)
	for _, w := range d.workers {
		w.conn.Close()
	}
	for _, w := range d.workers {
		<-w.done
	}
	d.mu.Lock()
	d.createQ = nil // never brought up: nothing to undo but the map entry
	d.mu.Unlock()
	for _, t := range d.snapshot() {
		d.destroy(t, "shutdown")
	}
	for len(*d.tunnels.Load()) > 0 {
		select {
		case f := <-d.ctl:
			f()
		case <-d.wake:
		}
	}
	for _, w := range d.workers {
		w.raw.Close()
	}
	if d.fp != nil {
		if err := d.fp.Close(); err != nil {
			d.log.Error("tunnel fast path detach failed", "err", err)
		}
	}
	d.log.Info("tunnel stopped")
	return nil
}

// post hands f to the control thread. After Run has returned it is
// dropped.
func (d *Daemon) post(f func()) {
	select {
	case d.ctl <- f:
	case <-d.stopped:
	}
}

// snapshot returns the live tunnels.
func (d *Daemon) snapshot() []*tunnel {
	m := *d.tunnels.Load()
	out := make([]*tunnel, 0, len(m))
	for _, t := range m {
		out = append(out, t)
	}
	return out
}

// housekeep runs every second on the control thread: incremental flow
// expiry and the idle-tunnel timeout.
func (d *Daemon) housekeep(now time.Time) {
	if d.fp != nil && now.Sub(d.lastSweep) >= fastSweepEvery {
		// The LRU evicts only under pressure; GWLB forgets idle flows
		// after its timeouts, so must we (a reused 5-tuple must not be
		// answered with a dead flow's header).
		d.lastSweep = now
		d.fp.Sweep(d.cfg.Flows.TCPTimeout, d.cfg.Flows.OtherTimeout)
	}
	for _, t := range d.snapshot() {
		for i := 0; i < 16 && t.flows.Expire(now, 4096) == 4096; i++ {
		}
		if t.fast.Load() {
			// Fast-path traffic keeps the tunnel alive too.
			if last := d.fp.Tunnel(t.pair.Slot).Last; !last.IsZero() {
				t.touch(last.UnixNano())
			}
		}
		if d.cfg.IdleTimeout > 0 && t.state.Load() == stateUp &&
			now.Sub(time.Unix(0, t.lastActive.Load())) > d.cfg.IdleTimeout {
			d.destroy(t, "idle")
		}
	}
}

// allowed reports whether GENEVE from a may be accepted.
func (d *Daemon) allowed(a netip.Addr) bool {
	for _, p := range d.cfg.AllowedSources {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// tunnelFor returns the tunnel for an endpoint, registering a new pending
// one (brought up by the control loop) on first sight. It returns nil when
// max_tunnels is reached or the daemon is stopping.
func (d *Daemon) tunnelFor(ep uint64) *tunnel {
	if t := (*d.tunnels.Load())[ep]; t != nil {
		return t
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	m := *d.tunnels.Load()
	if t := m[ep]; t != nil {
		return t
	}
	if !d.running.Load() || len(m) >= d.cfg.MaxTunnels {
		return nil
	}
	slot := preferredSlot(ep, len(d.slots)-1)
	if d.slots[slot] {
		slot = 0
		for i := 1; i < len(d.slots); i++ {
			if !d.slots[i] {
				slot = i
				break
			}
		}
	}
	if slot == 0 {
		return nil
	}
	d.slots[slot] = true
	t := newTunnel(d, ep, uint16(slot))
	m2 := maps.Clone(m)
	m2[ep] = t
	d.tunnels.Store(&m2)
	d.createQ = append(d.createQ, t)
	select {
	case d.wake <- struct{}{}:
	default:
	}
	return t
}

// preferredSlot is the slot an endpoint gets when it is free: derived
// from the endpoint id, not from arrival order, so that after a restart an
// endpoint gets its old slot back and state keyed by slot that outlives
// the process (steering's conntrack marks on live connections) still
// points at the right tunnel. Collisions fall back to the first free slot.
func preferredSlot(ep uint64, n int) int {
	h := ep * 0x9e3779b97f4a7c15
	h ^= h >> 29
	return 1 + int(h%uint64(n))
}

// drainCreates brings up the tunnels the workers registered.
func (d *Daemon) drainCreates() {
	for {
		d.mu.Lock()
		if len(d.createQ) == 0 {
			d.mu.Unlock()
			return
		}
		t := d.createQ[0]
		d.createQ = d.createQ[1:]
		d.mu.Unlock()
		d.bringUp(t)
	}
}

// remove drops t from the map and frees its slot.
func (d *Daemon) remove(t *tunnel) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t.state.Swap(stateGone) == stateGone {
		return
	}
	m := *d.tunnels.Load()
	if m[t.pair.EndpointID] == t {
		m2 := maps.Clone(m)
		delete(m2, t.pair.EndpointID)
		d.tunnels.Store(&m2)
	}
	d.slots[t.pair.Slot] = false
}

// Health reports nil while Run is serving and every worker has looped
// recently.
func (d *Daemon) Health() error {
	if !d.running.Load() {
		return errors.New("tunnel: not running")
	}
	now := time.Now()
	for _, w := range d.workers {
		select {
		case <-w.done:
			return fmt.Errorf("tunnel: worker %d stopped", w.id)
		default:
		}
		if last := time.Unix(0, w.lastLoop.Load()); now.Sub(last) > heartbeatStale {
			return fmt.Errorf("tunnel: worker %d stalled for %s", w.id, now.Sub(last).Round(time.Second))
		}
	}
	return nil
}

// dropTotals sums the per-worker drop counters.
func (d *Daemon) dropTotals() [numDrops]uint64 {
	var s [numDrops]uint64
	for _, w := range d.workers {
		for i := range s {
			s[i] += w.drops[i].Load()
		}
	}
	if d.fp != nil {
		c := d.fp.Counters()
		for r := geneve.Truncated; r < geneve.NumReasons; r++ {
			s[dropGeneveBase+int(r)] += c[r]
		}
		s[dropForeignSource] += c[fastpath.ReasonForeignSource]
		s[dropSend] += c[fastpath.ErrHelper]
	}
	return s
}
