//go:build linux

package tunnel

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/fastpath"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/offload"
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
			if r := w.receive(rx, i, now); r >= 0 {
				w.drops[r].Add(1)
			}
		}
		if len(rx.gro) > 0 {
			w.flushGRO(rx)
		}
	}
}

// rxHeadroom is reserved in front of every receive buffer so that a
// virtio-net header fits before the inner packet even when the GENEVE
// header in front of it is shorter (it carries no options).
const rxHeadroom = 16

// rxState is a worker's preallocated receive buffers and scratch.
type rxState struct {
	msgs    []udp.Message
	raw     [][]byte // raw[i][rxHeadroom:] is msgs[i].Buf
	h       geneve.Header
	k       flow.Key
	cache   *tunnel
	cacheEP uint64

	// Packets held for coalescing until the end of the batch.
	gro    []groPkt
	pkts   [][]byte
	idx    []int // pkts[j] is gro[idx[j]]
	parts  [][]byte
	merger *offload.Coalescer
}

// groPkt is an inner packet waiting in rx.raw[msg][start:end].
type groPkt struct {
	t          *tunnel
	msg        int
	start, end int
}

func newRxState(cfg Config) *rxState {
	rx := &rxState{
		msgs:   make([]udp.Message, cfg.Batch),
		raw:    make([][]byte, cfg.Batch),
		gro:    make([]groPkt, 0, cfg.Batch),
		pkts:   make([][]byte, 0, cfg.Batch),
		idx:    make([]int, 0, cfg.Batch),
		parts:  make([][]byte, 0, offload.MaxSegments+1),
		merger: offload.NewCoalescer(cfg.Batch, true),
	}
	size := geneve.MaxHeaderLen + cfg.MTU
	for i := range rx.msgs {
		rx.raw[i] = make([]byte, rxHeadroom+size)
		rx.msgs[i].Buf = rx.raw[i][rxHeadroom:]
	}
	return rx
}

// receive handles datagram i and returns a drop reason or -1. Packets for
// a tunnel with offloads are held in rx.gro and written by flushGRO.
func (w *worker) receive(rx *rxState, i int, now time.Time) int {
	m := &rx.msgs[i]
	t, inner, r := w.decap(rx, m, now)
	if r >= 0 {
		return r
	}
	if t.state.Load() == stateUp {
		if t.in.Queue(w.id).VnetHdr() {
			end := rxHeadroom + m.N
			rx.gro = append(rx.gro, groPkt{t: t, msg: i, start: end - len(inner), end: end})
			return -1
		}
		return w.write(t, inner)
	}
	return t.enqueue(inner, w)
}

// flushGRO writes the held packets, tunnel by tunnel: each tunnel's
// packets are coalesced and every result is written with one writev of a
// virtio-net header, the head packet and the merged payloads.
func (w *worker) flushGRO(rx *rxState) {
	for first := 0; first < len(rx.gro); first++ {
		t := rx.gro[first].t
		if t == nil {
			continue // done with an earlier tunnel
		}
		rx.pkts, rx.idx = rx.pkts[:0], rx.idx[:0]
		for j := first; j < len(rx.gro); j++ {
			g := &rx.gro[j]
			if g.t == t {
				rx.pkts = append(rx.pkts, rx.raw[g.msg][g.start:g.end])
				rx.idx = append(rx.idx, j)
				g.t = nil
			}
		}
		q := t.in.Queue(w.id)
		rx.merger.UDP = t.in.Offloads().USO
		for _, sp := range rx.merger.Coalesce(rx.pkts) {
			g := &rx.gro[rx.idx[sp.Head]]
			// The head's virtio-net header goes in the bytes just before
			// it (GENEVE header, already learned), so head and header are
			// one iovec.
			hs := g.start - offload.VirtioNetHdrLen
			sp.Hdr.Encode(rx.raw[g.msg][hs:g.start])
			rx.parts = rx.merger.AppendParts(rx.parts[:0], rx.pkts, &sp)
			rx.parts[0] = rx.raw[g.msg][hs:g.end]
			n, err := q.WriteVec(rx.parts)
			if err != nil {
				w.drops[dropTunWrite].Add(uint64(sp.Segments))
				continue
			}
			// Count the original packets' bytes: every merged packet lost
			// its headers.
			c := &t.ctr[w.id]
			c.inPackets.Add(uint64(sp.Segments))
			c.tunWrites.Add(1)
			c.inBytes.Add(uint64(n - offload.VirtioNetHdrLen + (sp.Segments-1)*int(sp.Hdr.HdrLen)))
		}
		w.drainReturn(t)
	}
	clear(rx.gro) // drop tunnel references
	rx.gro = rx.gro[:0]
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
	c.tunWrites.Add(1)
}

// readTun is the return path for one tun queue: packets the kernel routed
// into gwi-/gwo- are matched to their flow and sent back to GWLB with the
// flow's newest GENEVE header, from the local address the flow arrived on
// and GWLB's source port, to the GENEVE port.
func (d *Daemon) readTun(t *tunnel, q *tun.Queue, wid int, rq *returnQueue) {
	defer t.readers.Done()
	if q.VnetHdr() {
		if rq == nil {
			rq = &returnQueue{q: q, tx: newTxOffload(d.cfg, d.workers[wid].raw)}
		}
		d.readTunOffload(t, rq, wid)
		return
	}
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
		t.ctr[wid].tunReads.Add(uint64(n))
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
	fe    fastpath.Entry
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
		if !d.lookupFlow(t, tx.k, info, &tx.e, &tx.fe, now) {
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

// maxVnetRead is the largest read from a tun queue with offloads: a
// virtio-net header and a 64 KiB GSO super-packet, with slack so a read
// that fills it exactly can be recognised as truncated.
const maxVnetRead = offload.VirtioNetHdrLen + 65536 + 64

// segRoom is one segment's slot in txOffload.scratch: room for the outer
// and GENEVE headers, then the inner headers the Splitter writes.
const segRoom = txHeadroom + offload.MaxHeaderLen

// txOffload is a tun reader's state when the device has offloads: reads
// are packed into one arena (a few super-packets or many small packets),
// super-packets are split into segments whose headers are built in
// scratch and whose payloads are sent straight from the arena.
type txOffload struct {
	arena   []byte
	rpkts   [][]byte
	scratch []byte
	used    int // scratch slots in use
	pkts    []udp.Packet
	bytes   uint64
	batch   *udp.Batch
	sp      offload.Splitter
	k       flow.Key
	e       flow.Entry
	fe      fastpath.Entry
}

func newTxOffload(cfg Config, raw *udp.RawSender) *txOffload {
	return &txOffload{
		arena:   make([]byte, 4*(txHeadroom+maxVnetRead)),
		rpkts:   make([][]byte, cfg.Batch),
		scratch: make([]byte, cfg.Batch*segRoom),
		pkts:    make([]udp.Packet, 0, cfg.Batch),
		batch:   raw.NewBatch(cfg.Batch),
	}
}

// returnQueue is the return path of one tun queue with virtio-net
// headers: its reader goroutine and the worker of the same index both
// drain it, one at a time under mu, with the same buffers.
//
// Why the worker drains too: a tun write forwards the packet within the
// write system call, so after writing a batch to gwi- the packets the
// kernel routed to gwo- are already in that queue. Sending them back at
// once costs no wake-up and no goroutine switch, and it paces the receive
// path to the return path: with the reader left to the scheduler, a busy
// worker kept decapsulating while gwo-'s queue overflowed, wasting all the
// work done on the packets dropped there.
type returnQueue struct {
	mu sync.Mutex
	q  *tun.Queue
	tx *txOffload
}

// maxDrainBatches bounds the batches read under one hold of
// returnQueue.mu.
const maxDrainBatches = 4

// readTunOffload is readTun for a queue with virtio-net headers: it waits
// for the queue to become readable, then drains it under rq.mu.
func (d *Daemon) readTunOffload(t *tunnel, rq *returnQueue, wid int) {
	w := d.workers[wid]
	for {
		err := rq.q.WaitRead()
		if err == nil {
			rq.mu.Lock()
			err = d.drainBatches(t, w, rq)
			rq.mu.Unlock()
		}
		if err != nil {
			if errors.Is(err, os.ErrClosed) || t.state.Load() >= stateClosing {
				return
			}
			d.log.Error("tunnel read failed", "interface", rq.q.Name(), "worker", wid, "err", err)
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// drainBatches drains rq until it is empty, fails, or maxDrainBatches
// full batches were sent. rq.mu must be held.
func (d *Daemon) drainBatches(t *tunnel, w *worker, rq *returnQueue) error {
	for i := 0; i < maxDrainBatches; i++ {
		if n, err := d.drain(t, w, rq); err != nil || n < len(rq.tx.rpkts) {
			return err
		}
	}
	return nil
}

// drain reads what rq's queue holds now (one batch, without blocking),
// re-encapsulates and sends it. rq.mu must be held.
func (d *Daemon) drain(t *tunnel, w *worker, rq *returnQueue) (int, error) {
	tx := rq.tx
	n, err := rq.q.TryReadPackets(tx.arena, txHeadroom, maxVnetRead, tx.rpkts)
	if n == 0 {
		return 0, err
	}
	now := time.Now()
	t.touch(now.UnixNano())
	t.ctr[w.id].tunReads.Add(uint64(n))
	for i := 0; i < n; i++ {
		d.returnPacket(t, w, tx, tx.rpkts[i], now)
	}
	d.flushTx(t, w, tx)
	return n, nil
}

// drainReturn sends back what the worker's last writes to t forwarded
// into t's gwo- queue of this worker, unless that queue's reader is at it.
func (w *worker) drainReturn(t *tunnel) {
	rq := t.outRet[w.id]
	if rq == nil || !rq.mu.TryLock() {
		return
	}
	_ = w.d.drainBatches(t, w, rq) // the queue's reader sees and logs errors
	rq.mu.Unlock()
}

// returnPacket encapsulates one read (virtio-net header and packet, maybe
// a super-packet) into tx.pkts, sending whenever the batch fills.
func (d *Daemon) returnPacket(t *tunnel, w *worker, tx *txOffload, raw []byte, now time.Time) {
	var vh offload.VirtioNetHdr
	if len(raw) >= maxVnetRead || vh.Decode(raw) != nil {
		w.drops[dropGSOMalformed].Add(1)
		return
	}
	p := raw[offload.VirtioNetHdrLen:]
	if err := tx.sp.Reset(p, vh, d.cfg.MTU); err != nil {
		if errors.Is(err, offload.ErrTooBig) {
			w.drops[dropGSOOverMTU].Add(uint64(max(tx.sp.Segments(), 1)))
		} else {
			w.drops[dropGSOMalformed].Add(1)
		}
		return
	}
	segs := uint64(tx.sp.Segments())
	// One flow lookup for the whole super-packet: its segments share
	// addresses and ports.
	info, r := flow.ParsePacket(p, &tx.k)
	if r != flow.OK {
		w.drops[dropReturnBase+int(r)].Add(segs)
		return
	}
	if !d.lookupFlow(t, tx.k, info, &tx.e, &tx.fe, now) {
		w.drops[dropNoFlow].Add(segs)
		return
	}
	hdr := tx.e.Header()
	gw := tx.e.GWLB
	src, dst := netip.AddrPortFrom(tx.e.Local, gw.Port()), netip.AddrPortFrom(gw.Addr(), d.cfg.Port)
	if !tx.sp.GSO() {
		if len(tx.pkts) == cap(tx.pkts) {
			d.flushTx(t, w, tx)
		}
		// In place: the arena has txHeadroom free before every read.
		off := cap(tx.arena) - cap(p)
		start := off - len(hdr)
		copy(tx.arena[start:off], hdr)
		pkt, err := udp.Encap(tx.arena, start, len(hdr)+len(p), src, dst, udp.DefaultTTL)
		if err != nil {
			w.drops[dropSend].Add(1)
			return
		}
		tx.pkts = append(tx.pkts, udp.Packet{Buf: pkt, Dst: gw.Addr()})
		tx.bytes += uint64(len(p))
		return
	}
	for {
		if len(tx.pkts) == cap(tx.pkts) || tx.used == cap(tx.pkts) {
			d.flushTx(t, w, tx)
		}
		slot := tx.scratch[tx.used*segRoom : (tx.used+1)*segRoom]
		hl, pl, plSum, ok := tx.sp.Next(slot[txHeadroom:])
		if !ok {
			return
		}
		tx.used++
		start := txHeadroom - len(hdr)
		copy(slot[start:txHeadroom], hdr)
		pkt, err := udp.EncapTail(slot, start, len(hdr)+hl, pl, plSum, src, dst, udp.DefaultTTL)
		if err != nil {
			w.drops[dropSend].Add(1)
			continue
		}
		tx.pkts = append(tx.pkts, udp.Packet{Buf: pkt, Tail: pl, Dst: gw.Addr()})
		tx.bytes += uint64(hl + len(pl))
	}
}

// flushTx sends tx.pkts and frees the scratch slots.
func (d *Daemon) flushTx(t *tunnel, w *worker, tx *txOffload) {
	if len(tx.pkts) > 0 {
		sent, _ := tx.batch.Send(tx.pkts)
		bytes := tx.bytes
		if lost := len(tx.pkts) - sent; lost > 0 {
			w.drops[dropSend].Add(uint64(lost))
			bytes = bytes * uint64(sent) / uint64(len(tx.pkts))
		}
		c := &t.ctr[w.id]
		c.outPackets.Add(uint64(sent))
		c.outBytes.Add(bytes)
	}
	clear(tx.pkts)
	tx.pkts, tx.used, tx.bytes = tx.pkts[:0], 0, 0
}
