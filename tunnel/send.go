//go:build linux

package tunnel

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/fastpath"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/offload"
	"github.com/gwlbproxy/gwlbproxy/tunnel/tun"
	"github.com/gwlbproxy/gwlbproxy/tunnel/udp"
)

// The send path, the appliance back to GWLB, in the order a packet takes
// it (receive.go is the way in):
//
//  1. Read a tun queue: whatever the kernel routed into gwi-<X> or
//     gwo-<X>. Every queue has a reader goroutine (readTun); a queue with
//     virtio-net headers is also drained by the worker of the same index
//     right after its writes (drainReturn).
//  2. Split (offload queues only): a GSO super-packet is cut into
//     segments by offload.Splitter, headers in scratch, payloads left in
//     place.
//  3. Flow lookup (txBatch.lookup): the flow's newest GENEVE header, the
//     local address it arrived on and GWLB's address and source port.
//  4. Encapsulation (txBatch.encap), the one place outer packets are
//     built: the stored GENEVE header and the outer IP/UDP headers are
//     written in the headroom in front of the packet, which is never
//     copied.
//  5. Send (txBatch.flush): one sendmmsg on the worker's raw socket for
//     the whole batch, then the counts.
//
// The two kinds of queue share steps 3 to 5 and differ only in how
// packets come out of the kernel: txState reads a batch of plain packets
// into one buffer each; txOffload reads packets with virtio-net headers
// into an arena and splits super-packets. Nothing is allocated per packet.

// txHeadroom is the space left in front of each packet read from a tun
// queue, so the GENEVE header and the outer IP/UDP headers are written in
// place and the packet itself is never copied.
const txHeadroom = (udp.HeaderRoom + geneve.MaxHeaderLen + 15) &^ 15

// txBatch is what every tun reader has, whatever its queue: the outer
// packets waiting to be sent, the inner bytes they carry, the raw-socket
// batch that sends them and the flow lookup's scratch.
type txBatch struct {
	pkts  []udp.Packet
	bytes uint64
	batch *udp.Batch
	port  uint16 // GWLB's GENEVE port (Config.Port)
	k     flow.Key
	e     flow.Entry
	fe    fastpath.Entry
}

func newTxBatch(cfg Config, raw *udp.RawSender) txBatch {
	tx := txBatch{pkts: make([]udp.Packet, 0, cfg.Batch), port: cfg.Port}
	if raw != nil {
		tx.batch = raw.NewBatch(cfg.Batch)
	}
	return tx
}

// lookup parses the inner packet p and finds its flow into tx.e. On
// failure it counts segs drops (a super-packet's segments share one
// lookup) and reports false.
func (tx *txBatch) lookup(d *Daemon, t *tunnel, w *worker, p []byte, segs uint64, now time.Time) bool {
	info, r := flow.ParsePacket(p, &tx.k)
	if r != flow.OK {
		w.drops[dropReturnBase+int(r)].Add(segs)
		return false
	}
	if !d.lookupFlow(t, tx.k, info, &tx.e, &tx.fe, now) {
		w.drops[dropNoFlow].Add(segs)
		return false
	}
	// Only a packet that found its flow is activity: the kernel's own
	// chatter on the tun devices (IPv6 router solicitations, MLD
	// reports) has none and must not keep an idle tunnel alive. The eBPF
	// datapath's egress likewise counts only packets that found a flow
	// (tstats.last, read by housekeep).
	t.touch(now.UnixNano())
	return true
}

// encap is the one encapsulation: it writes the GENEVE header stored in
// tx.e (by lookup) and the outer IP/UDP headers in front of buf[off:off+n]
// followed by tail, and queues the outer packet in tx.pkts. The packet
// goes from the local address the flow arrived on and GWLB's source port
// to GWLB's GENEVE port. buf must have txHeadroom free before off and
// tx.pkts room for one more packet; tailSum is csum.Sum(tail, 0). A
// packet that cannot be built is counted as a send drop.
func (tx *txBatch) encap(w *worker, buf []byte, off, n int, tail []byte, tailSum uint64) {
	hdr := tx.e.Header()
	start := off - len(hdr)
	copy(buf[start:off], hdr)
	gw := tx.e.GWLB
	pkt, err := udp.EncapTail(buf, start, len(hdr)+n, tail, tailSum,
		netip.AddrPortFrom(tx.e.Local, gw.Port()), netip.AddrPortFrom(gw.Addr(), tx.port), udp.DefaultTTL)
	if err != nil {
		w.drops[dropSend].Add(1)
		return
	}
	tx.pkts = append(tx.pkts, udp.Packet{Buf: pkt, Tail: tail, Dst: gw.Addr()})
	tx.bytes += uint64(n + len(tail))
}

// flush sends tx.pkts with one sendmmsg, counts what went out into t's
// counters for w and what did not into w's drops, and empties the batch.
func (tx *txBatch) flush(t *tunnel, w *worker) {
	if len(tx.pkts) > 0 {
		sent, _ := tx.batch.Send(tx.pkts)
		bytes := tx.bytes
		if lost := len(tx.pkts) - sent; lost > 0 {
			w.drops[dropSend].Add(uint64(lost))
			// Bytes are approximate when part of a batch failed.
			bytes = bytes * uint64(sent) / uint64(len(tx.pkts))
		}
		c := &t.ctr[w.id]
		c.outPackets.Add(uint64(sent))
		c.outBytes.Add(bytes)
	}
	tx.reset()
}

// reset empties the batch (dropping its references to the buffers).
func (tx *txBatch) reset() {
	clear(tx.pkts)
	tx.pkts, tx.bytes = tx.pkts[:0], 0
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

// txState is a tun reader's state when the device has no offloads: one
// buffer per packet of a batch, each read at txHeadroom.
type txState struct {
	txBatch
	bufs  [][]byte
	sizes []int
}

func newTxState(cfg Config, raw *udp.RawSender) *txState {
	tx := &txState{
		txBatch: newTxBatch(cfg, raw),
		bufs:    make([][]byte, cfg.Batch),
		sizes:   make([]int, cfg.Batch),
	}
	for i := range tx.bufs {
		tx.bufs[i] = make([]byte, txHeadroom+cfg.MTU)
	}
	return tx
}

// encapBatch re-encapsulates tx.bufs[0:n] (read at txHeadroom) into a new
// batch in tx.pkts, counting drops into w.
func (d *Daemon) encapBatch(t *tunnel, w *worker, tx *txState, n int, now time.Time) {
	tx.reset()
	for i := 0; i < n; i++ {
		p := tx.bufs[i][txHeadroom : txHeadroom+tx.sizes[i]]
		if tx.lookup(d, t, w, p, 1, now) {
			tx.encap(w, tx.bufs[i], txHeadroom, len(p), nil, 0)
		}
	}
}

// sendBatch sends back one batch read from a queue without offloads.
func (d *Daemon) sendBatch(t *tunnel, w *worker, tx *txState, n int, now time.Time) {
	d.encapBatch(t, w, tx, n, now)
	tx.flush(t, w)
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
	txBatch
	arena   []byte
	rpkts   [][]byte
	scratch []byte
	used    int // scratch slots in use
	sp      offload.Splitter
}

func newTxOffload(cfg Config, raw *udp.RawSender) *txOffload {
	return &txOffload{
		txBatch: newTxBatch(cfg, raw),
		arena:   make([]byte, 4*(txHeadroom+maxVnetRead)),
		rpkts:   make([][]byte, cfg.Batch),
		scratch: make([]byte, cfg.Batch*segRoom),
	}
}

// flush sends the batch and frees the scratch slots.
func (tx *txOffload) flush(t *tunnel, w *worker) {
	tx.txBatch.flush(t, w)
	tx.used = 0
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
	t.ctr[w.id].tunReads.Add(uint64(n))
	for i := 0; i < n; i++ {
		d.returnPacket(t, w, tx, tx.rpkts[i], now)
	}
	tx.flush(t, w)
	return n, nil
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
	// One flow lookup for the whole super-packet: its segments share
	// addresses and ports.
	if !tx.lookup(d, t, w, p, uint64(tx.sp.Segments()), now) {
		return
	}
	if !tx.sp.GSO() {
		if len(tx.pkts) == cap(tx.pkts) {
			tx.flush(t, w)
		}
		// In place: the arena has txHeadroom free before every read.
		tx.encap(w, tx.arena, cap(tx.arena)-cap(p), len(p), nil, 0)
		return
	}
	for {
		if len(tx.pkts) == cap(tx.pkts) || tx.used == cap(tx.pkts) {
			tx.flush(t, w)
		}
		slot := tx.scratch[tx.used*segRoom : (tx.used+1)*segRoom]
		hl, pl, plSum, ok := tx.sp.Next(slot[txHeadroom:])
		if !ok {
			return
		}
		tx.used++
		tx.encap(w, slot, txHeadroom, hl, pl, plSum)
	}
}
