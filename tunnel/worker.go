package tunnel

import (
	"errors"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/tun"
	"github.com/gwlbproxy/gwlbproxy/tunnel/udp"
)

// txHeadroom is the space left in front of each packet read from a tun
// queue, so the GENEVE header and the outer IP/UDP headers are written in
// place and the packet itself is never copied.
const txHeadroom = (udp.HeaderRoom + geneve.MaxHeaderLen + 15) &^ 15

// worker owns one UDP socket and queue w.id of every tun device.
type worker struct {
	id   int
	d    *Daemon
	conn *udp.Conn
	raw  *udp.RawSender

	drops    [numDrops]atomic.Uint64
	lastLoop atomic.Int64 // heartbeat, ns
	done     chan struct{}
}

// run is the receive path: GENEVE in, inner packet out to gwi-<X>.
func (w *worker) run() {
	defer close(w.done)
	d := w.d
	rx := newRxState(d.cfg)
	var lastDeadline time.Time
	for {
		now := time.Now()
		w.lastLoop.Store(now.UnixNano())
		// Wake at least every second even when idle: the heartbeat is how
		// Health knows the loop is alive.
		if now.Sub(lastDeadline) > 500*time.Millisecond {
			w.conn.SetReadDeadline(now.Add(time.Second))
			lastDeadline = now
		}
		n, err := w.conn.ReadBatch(rx.msgs)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if udp.ErrClosed(err) {
				return
			}
			d.log.Error("tunnel receive failed", "worker", w.id, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		now = time.Now()
		for i := 0; i < n; i++ {
			if r := w.receive(rx, &rx.msgs[i], now); r >= 0 {
				w.drops[r].Add(1)
			}
		}
	}
}

// rxState is a worker's preallocated receive buffers and scratch.
type rxState struct {
	msgs    []udp.Message
	h       geneve.Header
	k       flow.Key
	cache   *tunnel
	cacheEP uint64
}

func newRxState(cfg Config) *rxState {
	rx := &rxState{msgs: make([]udp.Message, cfg.Batch)}
	size := geneve.MaxHeaderLen + cfg.MTU
	for i := range rx.msgs {
		rx.msgs[i].Buf = make([]byte, size)
	}
	return rx
}

// receive handles one datagram and returns a drop reason or -1.
func (w *worker) receive(rx *rxState, m *udp.Message, now time.Time) int {
	t, inner, r := w.decap(rx, m, now)
	if r >= 0 {
		return r
	}
	if t.state.Load() == stateUp {
		return w.write(t, inner)
	}
	return t.enqueue(inner, w)
}

// decap is the receive path up to the tun write: source check, GENEVE
// parse, tunnel lookup (or registration), flow learning. It returns the
// tunnel and inner packet, or a drop reason (>= 0).
func (w *worker) decap(rx *rxState, m *udp.Message, now time.Time) (*tunnel, []byte, int) {
	d := w.d
	if m.Truncated {
		return nil, nil, dropOversize
	}
	if !d.allowed(m.Src.Addr()) {
		return nil, nil, dropForeignSource
	}
	inner, r := geneve.Parse(m.Buf[:m.N], &rx.h)
	if r != geneve.OK {
		return nil, nil, dropGeneveBase + int(r)
	}
	t := rx.cache
	if t == nil || rx.cacheEP != rx.h.EndpointID || t.state.Load() >= stateFailed {
		if t = d.tunnelFor(rx.h.EndpointID); t == nil {
			return nil, nil, dropTunnelLimit
		}
		rx.cache, rx.cacheEP = t, rx.h.EndpointID
	}
	info, fr := flow.ParsePacket(inner, &rx.k)
	if fr != flow.OK {
		return nil, nil, dropInnerBase + int(fr)
	}
	// Learn before forwarding, with the newest header: GWLB may give a
	// reused 5-tuple a new cookie, and the reply may come back quickly.
	if !t.flows.Learn(rx.k, info, &rx.h, m.Src, m.Local, now) {
		t.ctr[w.id].learnFailed.Add(1)
	}
	t.touch(now.UnixNano())
	return t, inner, -1
}

// write delivers an inner packet to the tunnel's gwi- queue for this
// worker.
func (w *worker) write(t *tunnel, pkt []byte) int {
	if _, err := t.in.Queue(w.id).Write(pkt); err != nil {
		return dropTunWrite
	}
	w.countIn(t, len(pkt))
	return -1
}

func (w *worker) countIn(t *tunnel, n int) {
	c := &t.ctr[w.id]
	c.inPackets.Add(1)
	c.inBytes.Add(uint64(n))
}

// readTun is the return path for one tun queue: packets the kernel routed
// into gwi-/gwo- are matched to their flow and sent back to GWLB with the
// flow's newest GENEVE header, from the local address the flow arrived on
// and GWLB's source port, to the GENEVE port.
func (d *Daemon) readTun(t *tunnel, q *tun.Queue, wid int) {
	defer t.readers.Done()
	tx := newTxState(d.cfg, d.workers[wid].raw)
	w := d.workers[wid]
	for {
		n, err := q.ReadBatch(tx.bufs, tx.sizes, txHeadroom)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || t.state.Load() >= stateClosing {
				return
			}
			d.log.Error("tunnel read failed", "interface", t.pair.In, "worker", wid, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		d.sendBatch(t, w, tx, n, time.Now())
	}
}

// txState is one tun reader's preallocated buffers and scratch.
type txState struct {
	bufs  [][]byte
	sizes []int
	pkts  []udp.Packet
	batch *udp.Batch
	k     flow.Key
	e     flow.Entry
}

func newTxState(cfg Config, raw *udp.RawSender) *txState {
	tx := &txState{
		bufs:  make([][]byte, cfg.Batch),
		sizes: make([]int, cfg.Batch),
		pkts:  make([]udp.Packet, 0, cfg.Batch),
	}
	if raw != nil {
		tx.batch = raw.NewBatch(cfg.Batch)
	}
	for i := range tx.bufs {
		tx.bufs[i] = make([]byte, txHeadroom+cfg.MTU)
	}
	return tx
}

// encap re-encapsulates tx.bufs[0:n] (read at txHeadroom) into tx.pkts,
// counting drops into w. It returns the number of inner bytes queued.
func (d *Daemon) encap(t *tunnel, w *worker, tx *txState, n int, now time.Time) uint64 {
	tx.pkts = tx.pkts[:0]
	var bytes uint64
	for i := 0; i < n; i++ {
		buf := tx.bufs[i]
		p := buf[txHeadroom : txHeadroom+tx.sizes[i]]
		info, r := flow.ParsePacket(p, &tx.k)
		if r != flow.OK {
			w.drops[dropReturnBase+int(r)].Add(1)
			continue
		}
		if !t.flows.Lookup(tx.k, info, &tx.e, now) {
			w.drops[dropNoFlow].Add(1)
			continue
		}
		hdr := tx.e.Header()
		start := txHeadroom - len(hdr)
		copy(buf[start:txHeadroom], hdr)
		gw := tx.e.GWLB
		pkt, err := udp.Encap(buf, start, len(hdr)+len(p),
			netip.AddrPortFrom(tx.e.Local, gw.Port()), netip.AddrPortFrom(gw.Addr(), d.cfg.Port), udp.DefaultTTL)
		if err != nil {
			w.drops[dropSend].Add(1)
			continue
		}
		tx.pkts = append(tx.pkts, udp.Packet{Buf: pkt, Dst: gw.Addr()})
		bytes += uint64(len(p))
	}
	return bytes
}

func (d *Daemon) sendBatch(t *tunnel, w *worker, tx *txState, n int, now time.Time) {
	t.touch(now.UnixNano())
	bytes := d.encap(t, w, tx, n, now)
	if len(tx.pkts) == 0 {
		return
	}
	sent, _ := tx.batch.Send(tx.pkts)
	if lost := len(tx.pkts) - sent; lost > 0 {
		w.drops[dropSend].Add(uint64(lost))
		// Bytes are approximate when part of a batch failed.
		bytes = bytes * uint64(sent) / uint64(len(tx.pkts))
	}
	c := &t.ctr[w.id]
	c.outPackets.Add(uint64(sent))
	c.outBytes.Add(bytes)
}
