//go:build linux

package tunnel

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
	"github.com/gwlbproxy/gwlbproxy/tunnel/offload"
	"github.com/gwlbproxy/gwlbproxy/tunnel/udp"
)

// learnFlow decapsulates one GENEVE datagram (with an option) from GWLB
// carrying a client->server UDP packet, so the server's replies have a
// flow. It returns the tunnel and the GENEVE header GWLB sent.
func learnFlow(tb testing.TB, d *Daemon, w *worker) (*tunnel, []byte) {
	tb.Helper()
	rx := newRxState(d.cfg)
	dg := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, 42, 7, 99, geneve.Option{Class: 0xffee, Type: 5, Data: []byte{1, 2, 3}})
	hdr := append([]byte(nil), dg...)
	dg = append(dg, udpPacket(benchCli, benchSrv, 10)...)
	m := &rx.msgs[0]
	m.N = copy(m.Buf, dg)
	m.Src, m.Local = benchGWLB, benchLocal
	t, _, r := w.decap(rx, m, time.Now())
	if r >= 0 {
		tb.Fatalf("decap: drop %s", dropNames[r])
	}
	return t, hdr
}

// outerPacket checks p as an outer packet the send path built for the
// learned flow (addresses, ports, lengths, both checksums, the GENEVE
// header verbatim) and returns the inner packet it carries.
func outerPacket(t *testing.T, p udp.Packet, hdr []byte) []byte {
	t.Helper()
	pkt := append(append([]byte(nil), p.Buf...), p.Tail...)
	if p.Dst != benchGWLB.Addr() {
		t.Fatalf("dst %s", p.Dst)
	}
	if len(pkt) < 28+len(hdr) || pkt[0] != 0x45 || pkt[9] != 17 {
		t.Fatalf("not IPv4/UDP: %x", pkt[:min(len(pkt), 28)])
	}
	if int(binary.BigEndian.Uint16(pkt[2:])) != len(pkt) || int(binary.BigEndian.Uint16(pkt[24:])) != len(pkt)-20 {
		t.Fatalf("lengths: ip %d udp %d, packet %d", binary.BigEndian.Uint16(pkt[2:]), binary.BigEndian.Uint16(pkt[24:]), len(pkt))
	}
	if csum.Fold(csum.Sum(pkt[:20], 0)) != 0xffff {
		t.Fatal("bad IPv4 header checksum")
	}
	if netip.AddrFrom4([4]byte(pkt[12:16])) != benchLocal || netip.AddrFrom4([4]byte(pkt[16:20])) != benchGWLB.Addr() {
		t.Fatalf("outer addresses %v", pkt[12:20])
	}
	if sp, dp := binary.BigEndian.Uint16(pkt[20:]), binary.BigEndian.Uint16(pkt[22:]); sp != benchGWLB.Port() || dp != geneve.Port {
		t.Fatalf("ports %d -> %d", sp, dp)
	}
	if udpSum(pkt) != 0xffff {
		t.Fatal("bad outer UDP checksum")
	}
	if !bytes.Equal(pkt[28:28+len(hdr)], hdr) {
		t.Fatalf("GENEVE header not verbatim:\n%x\n%x", pkt[28:28+len(hdr)], hdr)
	}
	return pkt[28+len(hdr):]
}

// udpSum is the folded sum over an IPv4/UDP packet's pseudo-header and
// UDP header and payload: 0xffff when its checksum is right.
func udpSum(ip []byte) uint16 {
	ulen := len(ip) - 20
	return csum.Fold(csum.Sum(ip[20:], csum.Sum(ip[12:20], uint64(17)+uint64(ulen))))
}

// offloadRead puts a tun read (virtio-net header, then pkt) where
// TryReadPackets would: in tx's arena after txHeadroom.
func offloadRead(tx *txOffload, vh offload.VirtioNetHdr, pkt []byte) []byte {
	raw := tx.arena[txHeadroom : txHeadroom+offload.VirtioNetHdrLen+len(pkt)]
	vh.Encode(raw)
	copy(raw[offload.VirtioNetHdrLen:], pkt)
	return raw
}

// TestOneEncapsulation: a packet read from a queue without offloads and
// the same packet read with a virtio-net header leave as the same bytes,
// counted the same; a USO super-packet leaves as valid datagrams, each
// with the flow's header, carrying the payload in order.
func TestOneEncapsulation(t *testing.T) {
	d, w := benchDaemon(t)
	tn, hdr := learnFlow(t, d, w)
	reply := udpPacket(benchSrv, benchCli, 333)
	for i := range reply[28:] {
		reply[28+i] = byte(i)
	}
	now := time.Now()

	plain := newTxState(d.cfg, &udp.RawSender{})
	plain.sizes[0] = copy(plain.bufs[0][txHeadroom:], reply)
	d.encapBatch(tn, w, plain, 1, now)
	if len(plain.pkts) != 1 {
		t.Fatalf("plain: %d packets, drops %v", len(plain.pkts), d.dropTotals())
	}
	if inner := outerPacket(t, plain.pkts[0], hdr); !bytes.Equal(inner, reply) {
		t.Fatal("plain: inner packet changed")
	}

	off := newTxOffload(d.cfg, &udp.RawSender{})
	d.returnPacket(tn, w, off, offloadRead(off, offload.VirtioNetHdr{}, reply), now)
	if len(off.pkts) != 1 || len(off.pkts[0].Tail) != 0 {
		t.Fatalf("offload: %d packets, drops %v", len(off.pkts), d.dropTotals())
	}
	if !bytes.Equal(off.pkts[0].Buf, plain.pkts[0].Buf) || off.bytes != plain.bytes || off.bytes != uint64(len(reply)) {
		t.Fatalf("offload and plain differ:\n%x\n%x\nbytes %d %d", off.pkts[0].Buf, plain.pkts[0].Buf, off.bytes, plain.bytes)
	}
	off.flush(tn, w)

	// USO: 3 full datagrams of 100 bytes and a last one of 33.
	vh := offload.VirtioNetHdr{Flags: offload.FlagNeedsCsum, GSOType: offload.GSOUDPL4,
		HdrLen: 28, GSOSize: 100, CsumStart: 20, CsumOffset: 6}
	d.returnPacket(tn, w, off, offloadRead(off, vh, reply), now)
	if len(off.pkts) != 4 {
		t.Fatalf("uso: %d packets, drops %v", len(off.pkts), d.dropTotals())
	}
	var payload []byte
	var bytesIn uint64
	for i, p := range off.pkts {
		inner := outerPacket(t, p, hdr)
		if len(inner) < 28 || int(binary.BigEndian.Uint16(inner[2:])) != len(inner) || udpSum(inner) != 0xffff {
			t.Fatalf("uso segment %d: bad inner packet %x", i, inner[:min(len(inner), 28)])
		}
		if !bytes.Equal(inner[12:24], reply[12:24]) {
			t.Fatalf("uso segment %d: addresses or ports changed", i)
		}
		payload = append(payload, inner[28:]...)
		bytesIn += uint64(len(inner))
	}
	if !bytes.Equal(payload, reply[28:]) {
		t.Fatal("uso: payload not carried in order")
	}
	if off.bytes != bytesIn {
		t.Fatalf("uso: counted %d inner bytes, sent %d", off.bytes, bytesIn)
	}

	// The send is counted by the one flush: with no socket nothing is
	// sent, so every packet flushed is a send drop (the plain packet, the
	// offload one flushed above and the 4 segments).
	plain.flush(tn, w)
	off.flush(tn, w)
	if got := w.drops[dropSend].Load(); got != 1+1+4 {
		t.Fatalf("send drops %d, want 6", got)
	}
	if c := &tn.ctr[w.id]; c.outPackets.Load() != 0 || c.outBytes.Load() != 0 {
		t.Fatalf("counted %d packets %d bytes out, none was sent", c.outPackets.Load(), c.outBytes.Load())
	}
	if len(off.pkts) != 0 || off.used != 0 || off.bytes != 0 || len(plain.pkts) != 0 {
		t.Fatal("flush left the batch full")
	}
}

// TestReturnDropsCounted: what the offload return path cannot send is
// counted once per packet it would have been, by reason.
func TestReturnDropsCounted(t *testing.T) {
	d, w := benchDaemon(t)
	tn, _ := learnFlow(t, d, w)
	tx := newTxOffload(d.cfg, &udp.RawSender{})
	uso := func(mtu int) offload.VirtioNetHdr {
		return offload.VirtioNetHdr{Flags: offload.FlagNeedsCsum, GSOType: offload.GSOUDPL4,
			HdrLen: 28, GSOSize: uint16(mtu), CsumStart: 20, CsumOffset: 6}
	}
	now := time.Now()
	for _, c := range []struct {
		name string
		vh   offload.VirtioNetHdr
		pkt  []byte
		drop int
		n    uint64
	}{
		{"no flow", offload.VirtioNetHdr{}, udpPacket(benchSrv, netip.MustParseAddrPort("198.19.0.99:1"), 10), dropNoFlow, 1},
		{"no flow, 3 segments", uso(100), udpPacket(benchSrv, netip.MustParseAddrPort("198.19.0.99:1"), 250), dropNoFlow, 3},
		{"datagrams over the MTU", uso(d.cfg.MTU), udpPacket(benchSrv, benchCli, 2*d.cfg.MTU), dropGSOOverMTU, 2},
		{"GSO type for another protocol", offload.VirtioNetHdr{GSOType: offload.GSOTCPv4, GSOSize: 100, CsumStart: 20}, udpPacket(benchSrv, benchCli, 250), dropGSOMalformed, 1},
		{"not IP", offload.VirtioNetHdr{}, []byte{0x00, 1, 2, 3}, dropReturnBase, 1},
	} {
		before := d.dropTotals()
		d.returnPacket(tn, w, tx, offloadRead(tx, c.vh, c.pkt), now)
		after := d.dropTotals()
		if len(tx.pkts) != 0 {
			t.Errorf("%s: %d packets built", c.name, len(tx.pkts))
		}
		total := uint64(0)
		for i := range after {
			total += after[i] - before[i]
		}
		if c.drop == dropReturnBase {
			if total != c.n {
				t.Errorf("%s: %d drops, want %d", c.name, total, c.n)
			}
			continue
		}
		if got := after[c.drop] - before[c.drop]; got != c.n || total != c.n {
			t.Errorf("%s: %s +%d (all reasons +%d), want +%d", c.name, dropNames[c.drop], got, total, c.n)
		}
	}
}

// FuzzReturnPacket feeds the offload return path arbitrary reads (a
// virtio-net header and a packet) for a tunnel with a learned flow: it
// must not panic, and every packet it builds must be a well-formed outer
// packet whose checksums hold.
func FuzzReturnPacket(f *testing.F) {
	read := func(vh offload.VirtioNetHdr, pkt []byte) []byte {
		b := make([]byte, offload.VirtioNetHdrLen, offload.VirtioNetHdrLen+len(pkt))
		vh.Encode(b)
		return append(b, pkt...)
	}
	f.Add(read(offload.VirtioNetHdr{}, udpPacket(benchSrv, benchCli, 10)))
	f.Add(read(offload.VirtioNetHdr{Flags: offload.FlagNeedsCsum, CsumStart: 20, CsumOffset: 6}, udpPacket(benchSrv, benchCli, 10)))
	f.Add(read(offload.VirtioNetHdr{Flags: offload.FlagNeedsCsum, GSOType: offload.GSOUDPL4,
		HdrLen: 28, GSOSize: 100, CsumStart: 20, CsumOffset: 6}, udpPacket(benchSrv, benchCli, 250)))
	f.Add(read(offload.VirtioNetHdr{GSOType: offload.GSOTCPv4, GSOSize: 100, CsumStart: 20}, udpPacket(benchSrv, benchCli, 250)))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > maxVnetRead {
			return
		}
		d, w := benchDaemon(t)
		tn, hdr := learnFlow(t, d, w)
		tx := newTxOffload(d.cfg, &udp.RawSender{})
		raw := tx.arena[txHeadroom : txHeadroom+len(in)]
		copy(raw, in)
		d.returnPacket(tn, w, tx, raw, time.Now())
		for _, p := range tx.pkts {
			outerPacket(t, p, hdr)
		}
		tx.flush(tn, w)
	})
}
