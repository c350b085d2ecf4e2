//go:build linux

package tunnel

import (
	"bytes"
	"context"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/tun"
)

// Tunnel life cycle. Workers read the state on every packet; only the
// control thread changes it (and remove, under Daemon.mu).
const (
	statePending int32 = iota // registered, interfaces being created; packets queue
	stateUp                   // packets flow
	stateFailed               // bring-up failed; dropped, retried after failRetry
	stateClosing              // being destroyed
	stateGone                 // removed from the map
)

var stateNames = [...]string{"pending", "up", "failed", "closing", "gone"}

// failRetry is how long a tunnel that failed to come up stays failed
// before the next packet may try again.
const failRetry = 5 * time.Second

// tunnel is one GWLB endpoint's interface pair and flow table.
type tunnel struct {
	d     *Daemon
	pair  Pair
	hex   string
	flows *flow.Table
	state atomic.Int32

	mu      sync.Mutex // guards pending and the pending->up transition
	pending [][]byte

	in, out *tun.Device
	// outRet is out's return path per worker (nil entries without
	// virtio-net headers); set before the tunnel is up.
	outRet []*returnQueue
	ctr    []dirCounters // per worker
	// lastActive is the coarse time (ns) of the last packet either way.
	lastActive atomic.Int64
	createdAt  time.Time
	readers    sync.WaitGroup

	// fast: the in-kernel datapath carries this tunnel's packets.
	fast atomic.Bool

	// Control-thread only.
	createHookDone bool // CREATE hook finished (or none)
	destroying     bool
}

func newTunnel(d *Daemon, ep uint64, slot uint16) *tunnel {
	in, out := geneve.InterfaceNames(ep)
	t := &tunnel{
		d:         d,
		pair:      Pair{EndpointID: ep, In: in, Out: out, Slot: slot},
		hex:       geneve.EndpointHex(ep),
		flows:     flow.NewTable(d.cfg.Flows),
		ctr:       make([]dirCounters, d.nworkers),
		createdAt: time.Now(),
	}
	t.lastActive.Store(t.createdAt.UnixNano())
	return t
}

// touch records activity at now (ns), writing the shared word at most
// once per 100 ms so workers do not bounce its cache line.
func (t *tunnel) touch(now int64) {
	if now-t.lastActive.Load() > int64(100*time.Millisecond) {
		t.lastActive.Store(now)
	}
}

// enqueue holds a copy of a packet for a tunnel still coming up, or writes
// it if the tunnel came up meanwhile. It reports the drop reason, or -1.
func (t *tunnel) enqueue(pkt []byte, w *worker) int {
	t.mu.Lock()
	switch t.state.Load() {
	case stateUp:
		t.mu.Unlock()
		return w.write(t, pkt)
	case statePending:
		if len(t.pending) >= t.d.cfg.PendingPackets {
			t.mu.Unlock()
			return dropPendingFull
		}
		t.pending = append(t.pending, bytes.Clone(pkt))
		t.mu.Unlock()
		t.d.pendingQueued.Add(1)
		w.countIn(t, len(pkt))
		return -1
	}
	t.mu.Unlock()
	return dropTunnelDown
}

// bringUp creates the interfaces, starts their readers, tells the
// Observer, releases the queued packets and starts the CREATE hook. It
// runs on the control thread; other tunnels' packets keep flowing.
func (d *Daemon) bringUp(t *tunnel) {
	if t.state.Load() != statePending {
		return
	}
	start := time.Now()
	mk := func(name string) (*tun.Device, error) {
		return tun.Create(tun.Config{Name: name, Queues: d.nworkers, MTU: d.cfg.MTU, TxQueueLen: d.cfg.TxQueueLen, Offload: d.cfg.Offload}, d.nl)
	}
	in, err := mk(t.pair.In)
	if err != nil {
		d.fail(t, err)
		return
	}
	out, err := mk(t.pair.Out)
	if err != nil {
		in.Close(d.nl)
		d.fail(t, err)
		return
	}
	t.in, t.out = in, out
	t.pair.InIndex, t.pair.OutIndex = in.Index(), out.Index()
	t.outRet = make([]*returnQueue, d.nworkers)
	for q := 0; q < d.nworkers; q++ {
		if oq := out.Queue(q); oq.VnetHdr() {
			t.outRet[q] = &returnQueue{q: oq, tx: newTxOffload(d.cfg, d.workers[q].raw)}
		}
		t.readers.Add(2)
		go d.readTun(t, in.Queue(q), q, nil)
		go d.readTun(t, out.Queue(q), q, t.outRet[q])
	}
	if d.obs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ObserverTimeout)
		err := d.obs.PairUp(ctx, t.pair)
		cancel()
		if err != nil {
			// Fail closed: without steering, traffic would bypass the
			// proxy. Give the observer its chance to undo partial work.
			ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ObserverTimeout)
			_ = d.obs.PairDown(ctx, t.pair)
			cancel()
			d.closeDevices(t)
			d.fail(t, err)
			return
		}
	}
	t.mu.Lock()
	q0 := in.Queue(0)
	flushed := 0
	for _, p := range t.pending {
		if _, err := q0.Write(p); err == nil {
			flushed++
		} else {
			d.workers[0].drops[dropTunWrite].Add(1)
		}
	}
	t.pending = nil
	t.state.Store(stateUp)
	t.mu.Unlock()
	// After the queued packets: the kernel takes over only once steering
	// is in place and what waited has been delivered.
	d.created.Add(1)
	d.enableFastpath(t)
	off := in.Offloads()
	d.log.Info("tunnel up", "endpoint", "vpce-"+t.hex, "in", t.pair.In, "out", t.pair.Out,
		"slot", t.pair.Slot, "queued", flushed, "took", time.Since(start).Round(time.Microsecond),
		"tso", off.TSO, "uso", off.USO)
	if d.cfg.Offload && !off.USO && d.offloadWarned.CompareAndSwap(false, true) {
		d.log.Warn("tun offloads refused by the kernel: fewer packets per system call",
			"interface", t.pair.In, "tso", off.TSO, "uso", off.USO)
	}
	d.runHook(t, "CREATE", d.cfg.CreateHook, func() {
		t.createHookDone = true
		if t.destroying {
			d.runHook(t, "DESTROY", d.cfg.DestroyHook, func() { d.teardown(t) })
		}
	})
}

// fail marks t failed, drops its queue and schedules its removal so a
// later packet retries.
func (d *Daemon) fail(t *tunnel, err error) {
	d.failures.Add(1)
	d.log.Error("tunnel bring-up failed", "endpoint", "vpce-"+t.hex, "in", t.pair.In, "err", err)
	t.mu.Lock()
	d.workers[0].drops[dropTunnelDown].Add(uint64(len(t.pending)))
	t.pending = nil
	t.state.Store(stateFailed)
	t.mu.Unlock()
	time.AfterFunc(failRetry, func() { d.post(func() { d.remove(t) }) })
}

// destroy takes t down: DESTROY hook (after CREATE finished), then
// Observer.PairDown, then interface removal. Control thread.
func (d *Daemon) destroy(t *tunnel, why string) {
	if t.destroying {
		return
	}
	t.destroying = true
	switch t.state.Swap(stateClosing) {
	case stateUp:
		d.log.Info("tunnel closing", "endpoint", "vpce-"+t.hex, "in", t.pair.In, "reason", why)
		d.disableFastpath(t)
		if t.createHookDone {
			d.runHook(t, "DESTROY", d.cfg.DestroyHook, func() { d.teardown(t) })
		} // else the CREATE hook's completion continues the sequence
	default:
		// Never came up (pending or failed): nothing was announced.
		d.remove(t)
	}
}

// teardown is the end of destroy, after the DESTROY hook.
func (d *Daemon) teardown(t *tunnel) {
	if d.obs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ObserverTimeout)
		if err := d.obs.PairDown(ctx, t.pair); err != nil {
			d.log.Error("tunnel observer PairDown failed", "endpoint", "vpce-"+t.hex, "err", err)
		}
		cancel()
	}
	d.closeDevices(t)
	d.remove(t)
	d.destroyed.Add(1)
	d.log.Info("tunnel destroyed", "endpoint", "vpce-"+t.hex, "in", t.pair.In)
}

func (d *Daemon) closeDevices(t *tunnel) {
	for _, dev := range []*tun.Device{t.in, t.out} {
		if dev == nil {
			continue
		}
		if err := dev.Close(d.nl); err != nil {
			d.log.Error("tunnel interface removal failed", "interface", dev.Name(), "err", err)
		}
	}
	t.readers.Wait()
}

// maxHookOutput bounds the hook output kept for the log.
const maxHookOutput = 4096

type limitedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := maxHookOutput - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runHook starts `path verb gwi-X gwo-X <hex>` and calls then on the
// control thread when it has finished (or at once if there is no hook).
// The process is started from the control thread so it inherits the
// daemon's network namespace; waiting happens elsewhere so a slow hook
// stalls nobody.
func (d *Daemon) runHook(t *tunnel, verb, path string, then func()) {
	if path == "" {
		then()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.HookTimeout)
	cmd := exec.CommandContext(ctx, path, verb, t.pair.In, t.pair.Out, t.hex)
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		cancel()
		d.hookFailures.Add(1)
		d.log.Error("tunnel hook failed to start", "hook", verb, "path", path, "in", t.pair.In, "err", err)
		then()
		return
	}
	go func() {
		err := cmd.Wait()
		cancel()
		attrs := []any{"hook", verb, "path", path, "in", t.pair.In, "out", t.pair.Out,
			"endpoint", t.hex, "took", time.Since(start).Round(time.Millisecond), "output", out.String()}
		if err != nil {
			d.hookFailures.Add(1)
			d.log.Error("tunnel hook failed", append(attrs, "err", err)...)
		} else {
			d.log.Info("tunnel hook ran", attrs...)
		}
		d.post(then)
	}()
}
