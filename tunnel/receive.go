//go:build linux

package tunnel

import (
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/offload"
	"github.com/gwlbproxy/gwlbproxy/tunnel/udp"
)

// The receive path, GWLB to the appliance, in the order a packet takes it
// (send.go is the way back):
//
//  1. UDP batch receive: worker.run reads up to Config.Batch GENEVE
//     datagrams with one recvmmsg on the worker's SO_REUSEPORT socket.
//  2. Decapsulation (decap): source check, GENEVE parse, tunnel lookup or
//     registration, and flow learning with the datagram's GENEVE header,
//     which the send path later puts back verbatim.
//  3. Write to gwi-<X>: one write per inner packet (write), or, on a queue
//     with virtio-net headers, held until the end of the batch and
//     coalesced (GRO) into fewer, larger writes (flushGRO).
//  4. After a coalesced write the worker drains the tunnel's gwo- return
//     queue of the same index (drainReturn, in send.go).
//
// Packets for a tunnel still coming up wait in tunnel.enqueue. Every step
// counts its drops into the worker's per-reason counters; nothing is
// allocated per packet.

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
