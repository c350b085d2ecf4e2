//go:build linux

package tunnel

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/offload"
	"github.com/gwlbproxy/gwlbproxy/tunnel/udp"
)

var (
	benchGWLB  = netip.MustParseAddrPort("198.18.0.1:40123")
	benchLocal = netip.MustParseAddr("198.18.0.2")
	benchCli   = netip.MustParseAddrPort("198.19.0.10:40000")
	benchSrv   = netip.MustParseAddrPort("203.0.113.10:443")
)

// udpPacket builds an inner IPv4/UDP packet with a payload of n bytes.
func udpPacket(src, dst netip.AddrPort, n int) []byte {
	p := make([]byte, 28+n)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, 17
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+n))
	return p
}

// benchDaemon returns a daemon that is "running" without sockets, and a
// worker, for driving the per-packet functions directly.
func benchDaemon(tb testing.TB) (*Daemon, *worker) {
	cfg := DefaultConfig()
	cfg.AllowedSources = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}
	cfg.Workers = 1
	cfg.Flows.MaxEntries = 4096
	d, err := New(cfg, nil, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	d.running.Store(true)
	return d, d.workers[0]
}

// BenchmarkDecap is the receive path per packet up to the tun write:
// source check, GENEVE parse, tunnel lookup, flow parse and learn.
func BenchmarkDecap(b *testing.B) {
	d, w := benchDaemon(b)
	rx := newRxState(d.cfg)
	dg := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, 0x0123456789abcdef, 7, 99)
	dg = append(dg, udpPacket(benchCli, benchSrv, 64)...)
	m := &rx.msgs[0]
	m.N = copy(m.Buf, dg)
	m.Src, m.Local = benchGWLB, benchLocal
	now := time.Now()
	if _, _, r := w.decap(rx, m, now); r >= 0 {
		b.Fatalf("drop %s", dropNames[r])
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(dg)))
	for b.Loop() {
		if _, _, r := w.decap(rx, m, now); r >= 0 {
			b.Fatalf("drop %s", dropNames[r])
		}
	}
}

// BenchmarkEncap is the return path for a batch of 16 packets: flow parse and lookup,
// header copy into the headroom and outer IP/UDP headers with checksum.
func BenchmarkEncap(b *testing.B) {
	for _, size := range []int{64, 1400, 8400} {
		b.Run(fmt.Sprintf("inner%d", size+28), func(b *testing.B) {
			d, w := benchDaemon(b)
			rx := newRxState(d.cfg)
			dg := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, 0x0123456789abcdef, 7, 99)
			dg = append(dg, udpPacket(benchCli, benchSrv, size)...)
			m := &rx.msgs[0]
			m.N = copy(m.Buf, dg)
			m.Src, m.Local = benchGWLB, benchLocal
			t, _, r := w.decap(rx, m, time.Now())
			if r >= 0 {
				b.Fatalf("drop %s", dropNames[r])
			}
			raw := &udp.RawSender{}
			tx := newTxState(d.cfg, raw)
			reply := udpPacket(benchSrv, benchCli, size)
			batch := 16
			for i := 0; i < batch; i++ {
				tx.sizes[i] = copy(tx.bufs[i][txHeadroom:], reply)
			}
			now := time.Now()
			b.ReportAllocs()
			b.SetBytes(int64(batch * (size + 28)))
			for b.Loop() {
				d.encapBatch(t, w, tx, batch, now)
				if len(tx.pkts) != batch {
					b.Fatalf("encapsulated %d of %d, drops %v", len(tx.pkts), batch, d.dropTotals())
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/pkt")
		})
	}
}

// BenchmarkReturnOffload is the return path of a queue with virtio-net
// headers for one read: a plain packet, or a USO super-packet of 40
// datagrams of 1400 bytes split into segments. Flow lookup, the split,
// header copy and outer headers with checksum; not the send.
func BenchmarkReturnOffload(b *testing.B) {
	for _, c := range []struct {
		name string
		segs int
	}{{"plain1428", 1}, {"uso40x1428", 40}} {
		b.Run(c.name, func(b *testing.B) {
			d, w := benchDaemon(b)
			rx := newRxState(d.cfg)
			dg := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, 0x0123456789abcdef, 7, 99)
			dg = append(dg, udpPacket(benchCli, benchSrv, 64)...)
			m := &rx.msgs[0]
			m.N = copy(m.Buf, dg)
			m.Src, m.Local = benchGWLB, benchLocal
			t, _, r := w.decap(rx, m, time.Now())
			if r >= 0 {
				b.Fatalf("drop %s", dropNames[r])
			}
			tx := newTxOffload(d.cfg, &udp.RawSender{})
			vh := offload.VirtioNetHdr{}
			if c.segs > 1 {
				vh = offload.VirtioNetHdr{Flags: offload.FlagNeedsCsum, GSOType: offload.GSOUDPL4,
					HdrLen: 28, GSOSize: 1400, CsumStart: 20, CsumOffset: 6}
			}
			reply := udpPacket(benchSrv, benchCli, c.segs*1400)
			raw := tx.arena[txHeadroom : txHeadroom+offload.VirtioNetHdrLen+len(reply)]
			vh.Encode(raw)
			copy(raw[offload.VirtioNetHdrLen:], reply)
			now := time.Now()
			b.ReportAllocs()
			b.SetBytes(int64(len(reply)))
			for b.Loop() {
				tx.pkts, tx.used, tx.bytes = tx.pkts[:0], 0, 0
				// A plain packet is encapsulated in place, over its
				// virtio-net header: write it again, as a read would.
				vh.Encode(raw)
				d.returnPacket(t, w, tx, raw, now)
				if len(tx.pkts) != c.segs {
					b.Fatalf("encapsulated %d of %d, drops %v", len(tx.pkts), c.segs, d.dropTotals())
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*c.segs), "ns/pkt")
		})
	}
}

// TestEncapRoundTrip checks what the return path builds: the stored
// header verbatim, GWLB's source port as source, the GENEVE port as
// destination, the local address as source.
func TestEncapRoundTrip(t *testing.T) {
	d, w := benchDaemon(t)
	rx := newRxState(d.cfg)
	dg := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, 42, 7, 99, geneve.Option{Class: 0xffee, Type: 5, Data: []byte{1, 2, 3}})
	hdrLen := len(dg)
	dg = append(dg, udpPacket(benchCli, benchSrv, 10)...)
	m := &rx.msgs[0]
	m.N = copy(m.Buf, dg)
	m.Src, m.Local = benchGWLB, benchLocal
	tn, inner, r := w.decap(rx, m, time.Now())
	if r >= 0 || len(inner) != 38 {
		t.Fatalf("decap: drop %d inner %d", r, len(inner))
	}
	tx := newTxState(d.cfg, &udp.RawSender{})
	reply := udpPacket(benchSrv, benchCli, 10)
	tx.sizes[0] = copy(tx.bufs[0][txHeadroom:], reply)
	// A packet of an unknown flow is dropped, not sent.
	tx.sizes[1] = copy(tx.bufs[1][txHeadroom:], udpPacket(benchSrv, netip.MustParseAddrPort("198.19.0.99:1"), 10))
	d.encapBatch(tn, w, tx, 2, time.Now())
	if len(tx.pkts) != 1 || w.drops[dropNoFlow].Load() != 1 {
		t.Fatalf("pkts %d no_flow %d", len(tx.pkts), w.drops[dropNoFlow].Load())
	}
	p := tx.pkts[0]
	if p.Dst != benchGWLB.Addr() {
		t.Fatalf("dst %s", p.Dst)
	}
	ip := p.Buf
	if netip.AddrFrom4([4]byte(ip[12:16])) != benchLocal || netip.AddrFrom4([4]byte(ip[16:20])) != benchGWLB.Addr() {
		t.Fatalf("outer addresses %v", ip[12:20])
	}
	if sp, dp := binary.BigEndian.Uint16(ip[20:]), binary.BigEndian.Uint16(ip[22:]); sp != benchGWLB.Port() || dp != geneve.Port {
		t.Fatalf("ports %d -> %d", sp, dp)
	}
	if got := ip[28 : 28+hdrLen]; string(got) != string(dg[:hdrLen]) {
		t.Fatalf("header not verbatim:\n%x\n%x", got, dg[:hdrLen])
	}
	if string(ip[28+hdrLen:]) != string(reply) {
		t.Fatal("inner packet changed")
	}
	// The flow entry was learned per tunnel: another endpoint's table
	// does not know it.
	var k flow.Key
	info, _ := flow.ParsePacket(reply, &k)
	var e flow.Entry
	other := d.tunnelFor(43)
	if other.flows.Lookup(k, info, &e, time.Now()) {
		t.Fatal("flow leaked into another endpoint's table")
	}
}
