package flow

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

var (
	gwlbAddr  = ap("198.18.100.1:50000")
	localAddr = netip.MustParseAddr("198.18.100.2")
	t0        = time.Unix(1_700_000_000, 0)
)

func hdr(t testing.TB, endpoint uint64, cookie uint32, extra ...geneve.Option) *geneve.Header {
	t.Helper()
	pkt := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, endpoint, 7, cookie, extra...)
	pkt = append(pkt, 0x45)
	var h geneve.Header
	if _, r := geneve.Parse(pkt, &h); r != geneve.OK {
		t.Fatalf("geneve: %v", r)
	}
	return &h
}

func newTestTable(max int) *Table {
	cfg := DefaultTableConfig()
	cfg.MaxEntries = max
	cfg.Now = func() time.Time { return t0 }
	return NewTable(cfg)
}

func parseKey(t testing.TB, pkt []byte) (Key, Info) {
	t.Helper()
	var k Key
	info, r := ParsePacket(pkt, &k)
	if r != OK {
		t.Fatalf("ParsePacket: %v", r)
	}
	return k, info
}

func TestTableLearnLookupBothDirections(t *testing.T) {
	tb := newTestTable(1024)
	h := hdr(t, 0x0123456789abcdef, 1, geneve.Option{Class: 0x0200, Type: 3, Data: []byte("keep")})
	k, info := parseKey(t, ipv4(ProtoTCP, "198.18.0.1", "203.0.113.5", ports(40000, 443, 16), v4opts{}))
	if !tb.Learn(k, info, h, gwlbAddr, localAddr, t0) {
		t.Fatal("Learn refused")
	}
	rk, rinfo := parseKey(t, ipv4(ProtoTCP, "203.0.113.5", "198.18.0.1", ports(443, 40000, 16), v4opts{}))
	var e Entry
	if !tb.Lookup(rk, rinfo, &e, t0.Add(time.Second)) {
		t.Fatal("reply not found")
	}
	if !bytes.Equal(e.Header(), h.Raw) || e.GWLB != gwlbAddr || e.Local != localAddr ||
		e.EndpointID != 0x0123456789abcdef || e.Key != k || !e.LastSeen.Equal(t0.Add(time.Second)) {
		t.Fatalf("entry %+v header %x", e, e.Header())
	}
	// An ICMP error about the flow finds it too.
	ik, iinfo := parseKey(t, ipv4(ProtoICMP, "198.18.9.9", "203.0.113.5", icmp(3, 4,
		ipv4(ProtoTCP, "203.0.113.5", "198.18.0.1", ports(443, 40000, 4), v4opts{})), v4opts{}))
	if !tb.Lookup(ik, iinfo, &e, t0) {
		t.Fatal("icmp error not matched to flow")
	}
	unknown, uinfo := parseKey(t, ipv4(ProtoTCP, "203.0.113.5", "198.18.0.1", ports(443, 40001, 16), v4opts{}))
	if tb.Lookup(unknown, uinfo, &e, t0) {
		t.Fatal("unknown flow found")
	}
	if st := tb.Stats(); st.Flows != 1 || st.Learned != 1 || tb.Len() != 1 {
		t.Fatalf("stats %+v len %d", st, tb.Len())
	}
}

func TestTableCookieRefresh(t *testing.T) {
	tb := newTestTable(1024)
	k := NewKey(ProtoUDP, ap("198.18.0.1:5000"), ap("203.0.113.5:53"))
	tb.Learn(k, Info{Proto: ProtoUDP}, hdr(t, 1, 0xaaaa), gwlbAddr, localAddr, t0)
	newGWLB := ap("198.18.100.9:40000")
	newer := hdr(t, 1, 0xbbbb)
	tb.Learn(k, Info{Proto: ProtoUDP}, newer, newGWLB, localAddr, t0.Add(time.Second))
	var e Entry
	if !tb.Lookup(k, Info{}, &e, t0) {
		t.Fatal("not found")
	}
	if !bytes.Equal(e.Header(), newer.Raw) || e.GWLB != newGWLB {
		t.Fatalf("header %x gwlb %v, want the newest", e.Header(), e.GWLB)
	}
	if st := tb.Stats(); st.Refreshed != 1 || st.Flows != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestTableFragments(t *testing.T) {
	tb := newTestTable(1024)
	h := hdr(t, 5, 9)
	first, finfo := parseKey(t, ipv4(ProtoUDP, "198.18.0.1", "203.0.113.5", ports(4000, 53, 100), v4opts{id: 7, mf: true}))
	if !tb.Learn(first, finfo, h, gwlbAddr, localAddr, t0) {
		t.Fatal("first fragment not learned")
	}
	later, linfo := parseKey(t, ipv4(ProtoUDP, "198.18.0.1", "203.0.113.5", make([]byte, 8), v4opts{id: 7, off: 14}))
	if !tb.Learn(later, linfo, h, gwlbAddr, localAddr, t0) {
		t.Fatal("later fragment not mapped to its flow")
	}
	// Return direction: a fragmented reply with its own IP id.
	rfirst, rinfo := parseKey(t, ipv4(ProtoUDP, "203.0.113.5", "198.18.0.1", ports(53, 4000, 100), v4opts{id: 99, mf: true}))
	var e Entry
	if !tb.Lookup(rfirst, rinfo, &e, t0) {
		t.Fatal("first reply fragment")
	}
	rlater, rlinfo := parseKey(t, ipv4(ProtoUDP, "203.0.113.5", "198.18.0.1", make([]byte, 8), v4opts{id: 99, off: 14}))
	if !tb.Lookup(rlater, rlinfo, &e, t0) || e.Key != first {
		t.Fatal("later reply fragment not mapped")
	}
	orphan, oinfo := parseKey(t, ipv4(ProtoUDP, "203.0.113.5", "198.18.0.1", make([]byte, 8), v4opts{id: 100, off: 14}))
	if tb.Lookup(orphan, oinfo, &e, t0) {
		t.Fatal("orphan fragment found a flow")
	}
	if st := tb.Stats(); st.Flows != 1 || st.Fragments != 2 || st.Orphans != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Fragment mappings expire on their own, shorter timeout.
	if n := tb.Expire(t0.Add(31*time.Second), 100); n != 2 {
		t.Fatalf("expired %d, want the 2 fragment maps", n)
	}
	if tb.Lookup(rlater, rlinfo, &e, t0) {
		t.Fatal("fragment mapping outlived its timeout")
	}
}

func TestTableExpiryOrder(t *testing.T) {
	tb := newTestTable(1024)
	h := hdr(t, 1, 1)
	key := func(proto uint8, i int) Key {
		return NewKey(proto, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(1000+i)), ap("203.0.113.5:443"))
	}
	// UDP flows 0..9 learned one second apart, TCP flows likewise.
	for i := range 10 {
		now := t0.Add(time.Duration(i) * time.Second)
		tb.Learn(key(ProtoUDP, i), Info{Proto: ProtoUDP}, h, gwlbAddr, localAddr, now)
		tb.Learn(key(ProtoTCP, i), Info{Proto: ProtoTCP, TCP: true}, h, gwlbAddr, localAddr, now)
	}
	var e Entry
	// Replies keep UDP flow 0 alive.
	tb.Lookup(key(ProtoUDP, 0), Info{}, &e, t0.Add(100*time.Second))
	// At 125 s UDP flows 1..5 (seen at 1..5 s) are idle >= 120 s.
	if n := tb.Expire(t0.Add(125*time.Second), 1000); n != 5 {
		t.Fatalf("expired %d, want 5", n)
	}
	for i := range 10 {
		want := i == 0 || i > 5
		if got := tb.Lookup(key(ProtoUDP, i), Info{}, &e, t0.Add(125*time.Second)); got != want {
			t.Errorf("udp flow %d present=%v, want %v", i, got, want)
		}
	}
	// Budget bounds the work.
	if n := tb.Expire(t0.Add(354*time.Second), 2); n != 2 {
		t.Fatalf("budgeted expire removed %d", n)
	}
	// At 354 s TCP flows 0..4 are idle >= 350 s and the five remaining UDP
	// flows (last seen at 125 s) are idle >= 120 s: 10, 2 already gone.
	if n := tb.Expire(t0.Add(354*time.Second), 1000); n != 8 {
		t.Fatalf("expired %d, want 8", n)
	}
	for i := range 10 {
		if got := tb.Lookup(key(ProtoTCP, i), Info{}, &e, t0.Add(354*time.Second)); got != (i >= 5) {
			t.Errorf("tcp flow %d present=%v", i, got)
		}
	}
	if st := tb.Stats(); st.Expired != 15 || st.Flows != 5 || tb.Len() != 5 {
		t.Fatalf("stats %+v len %d", st, tb.Len())
	}
}

func TestTableBounded(t *testing.T) {
	tb := newTestTable(64)
	h := hdr(t, 1, 1)
	stored := 0
	for i := range 200 {
		k := NewKey(ProtoUDP, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(i)), ap("203.0.113.5:53"))
		if tb.Learn(k, Info{Proto: ProtoUDP}, h, gwlbAddr, localAddr, t0) {
			stored++
		}
	}
	if stored != 64 || tb.Len() != 64 {
		t.Fatalf("stored %d len %d, want 64", stored, tb.Len())
	}
	if st := tb.Stats(); st.Full != 136 {
		t.Fatalf("full %d", st.Full)
	}
	// Once entries are idle past their timeout a full table makes room.
	k := NewKey(ProtoUDP, ap("198.18.0.2:1"), ap("203.0.113.5:53"))
	later := t0.Add(121 * time.Second)
	if !tb.Learn(k, Info{Proto: ProtoUDP}, h, gwlbAddr, localAddr, later) {
		t.Fatal("full table did not reclaim an expired entry")
	}
	if tb.Len() > 64 {
		t.Fatalf("len %d over bound", tb.Len())
	}
}

func TestTableConfigValidate(t *testing.T) {
	if err := DefaultTableConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultTableConfig()
	c.TCPTimeout = 10 * time.Second
	if err := c.Validate(); err == nil || err.Error()[:12] != "tcp_timeout:" {
		t.Fatalf("err %v", err)
	}
	c = DefaultTableConfig()
	c.MaxEntries = 1
	if err := c.Validate(); err == nil || err.Error()[:12] != "max_entries:" {
		t.Fatalf("err %v", err)
	}
}

func TestTableConcurrent(t *testing.T) {
	tb := newTestTable(4096)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := hdr(t, uint64(w), uint32(w))
			var e Entry
			for i := range 3000 {
				k := NewKey(ProtoUDP, netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("198.18.%d.1", w)), uint16(i%500)), ap("203.0.113.5:53"))
				now := t0.Add(time.Duration(i) * time.Millisecond)
				tb.Learn(k, Info{Proto: ProtoUDP}, h, gwlbAddr, localAddr, now)
				if tb.Lookup(k, Info{}, &e, now) && e.EndpointID != uint64(w) {
					t.Errorf("worker %d saw endpoint %d", w, e.EndpointID)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 200 {
			tb.Expire(t0.Add(time.Duration(i)*time.Second), 64)
			_ = tb.Stats()
		}
	}()
	wg.Wait()
	st := tb.Stats()
	if st.Flows+st.Fragments != tb.Len() || tb.Len() > 2000 {
		t.Fatalf("stats %+v len %d", st, tb.Len())
	}
}

func BenchmarkTable(b *testing.B) {
	tb := newTestTable(1 << 16)
	h := hdr(b, 1, 1)
	keys := make([]Key, 1024)
	for i := range keys {
		keys[i] = NewKey(ProtoTCP, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), uint16(i)), ap("203.0.113.5:443"))
		tb.Learn(keys[i], Info{Proto: ProtoTCP, TCP: true}, h, gwlbAddr, localAddr, t0)
	}
	b.Run("learn-refresh", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			tb.Learn(keys[i&1023], Info{Proto: ProtoTCP, TCP: true}, h, gwlbAddr, localAddr, t0)
			i++
		}
	})
	b.Run("lookup", func(b *testing.B) {
		var e Entry
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if !tb.Lookup(keys[i&1023], Info{}, &e, t0) {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("lookup-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var e Entry
			i := 0
			for pb.Next() {
				tb.Lookup(keys[i&1023], Info{}, &e, t0)
				i++
			}
		})
	})
}
