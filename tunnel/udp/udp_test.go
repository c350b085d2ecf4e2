//go:build linux

package udp

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// naiveChecksum is RFC 1071 done 16 bits at a time: the independent check
// Encap's output is verified with (tunnel/csum holds the fast one).
func naiveChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// verify checks the IP header and UDP checksums of an Encap result the way
// a receiver does: summing over everything including the checksum gives 0.
func verify(t *testing.T, pkt []byte, v4 bool) {
	t.Helper()
	var pseudo []byte
	var udp []byte
	if v4 {
		if naiveChecksum(pkt[:20]) != 0xffff {
			t.Fatalf("bad IPv4 header checksum")
		}
		udp = pkt[20:]
		pseudo = append(append([]byte{}, pkt[12:20]...), 0, 17)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(udp)))
	} else {
		udp = pkt[40:]
		pseudo = append([]byte{}, pkt[8:40]...)
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(udp)))
		pseudo = append(pseudo, 0, 0, 0, 17)
	}
	if binary.BigEndian.Uint16(udp[6:]) == 0 {
		t.Fatalf("UDP checksum is 0")
	}
	if c := naiveChecksum(append(pseudo, udp...)); c != 0xffff {
		t.Fatalf("bad UDP checksum: sum %#x", c)
	}
}

func TestEncap(t *testing.T) {
	for _, tc := range []struct {
		src, dst string
		v4       bool
	}{
		{"198.18.0.2:6081", "198.18.0.1:40000", true},
		{"[2001:db8::2]:6081", "[2001:db8::1]:40001", false},
	} {
		for _, n := range []int{1, 2, 7, 64, 1500, 8568} {
			buf := make([]byte, HeaderRoom+n)
			for i := HeaderRoom; i < len(buf); i++ {
				buf[i] = byte(i * 7)
			}
			pkt, err := Encap(buf, HeaderRoom, n, netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst), 64)
			if err != nil {
				t.Fatal(err)
			}
			if len(pkt) != HeaderLen(netip.MustParseAddrPort(tc.dst).Addr())+n {
				t.Fatalf("len %d", len(pkt))
			}
			verify(t, pkt, tc.v4)
			hl := len(pkt) - n
			if sp := binary.BigEndian.Uint16(pkt[hl-8:]); sp != netip.MustParseAddrPort(tc.src).Port() {
				t.Fatalf("src port %d", sp)
			}
		}
	}
	if _, err := Encap(make([]byte, 100), 10, 50, netip.MustParseAddrPort("1.2.3.4:1"), netip.MustParseAddrPort("1.2.3.5:2"), 64); err == nil {
		t.Fatal("no error without headroom")
	}
	if _, err := Encap(make([]byte, 100), 48, 50, netip.MustParseAddrPort("1.2.3.4:1"), netip.MustParseAddrPort("[::1]:2"), 64); err == nil {
		t.Fatal("no error on family mismatch")
	}
}

func TestParsePktinfoGarbage(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 10000; i++ {
		b := make([]byte, r.IntN(80))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		parsePktinfo(b) // must not panic
	}
}

// TestRoundTrip sends through the raw sender from a chosen source port to
// a Listen socket: the kernel's own UDP checksum verification on receive
// proves the checksum, and Src/Local prove pktinfo parsing.
func TestRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("raw sockets need root")
	}
	for _, tc := range []struct{ listen, local string }{
		{"127.0.0.1:0", "127.0.0.1"},
		{"[::1]:0", "::1"},
		{"[::]:0", "127.0.0.1"}, // dual stack, v4 packet
		{"[::]:0", "::1"},
	} {
		t.Run(tc.listen+"/"+tc.local, func(t *testing.T) {
			ctx := context.Background()
			c, err := Listen(ctx, ListenConfig{Addr: netip.MustParseAddrPort(tc.listen), Batch: 8, ReadBuffer: 1 << 20})
			if err != nil {
				if tc.local == "::1" {
					t.Skipf("no IPv6: %v", err)
				}
				t.Fatal(err)
			}
			defer c.Close()
			// A second socket in the same reuseport group must bind.
			c2, err := Listen(ctx, ListenConfig{Addr: c.LocalAddr(), Batch: 8})
			if err != nil {
				t.Fatalf("reuseport: %v", err)
			}
			c2.Close()

			s, err := NewRawSender()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			b := s.NewBatch(4)
			local := netip.MustParseAddr(tc.local)
			dst := netip.AddrPortFrom(local, c.LocalAddr().Port())
			var pkts []Packet
			for i := 0; i < 6; i++ {
				payload := []byte{byte(i), 'h', 'e', 'l', 'l', 'o'}
				buf := append(make([]byte, HeaderRoom), payload...)
				pkt, err := Encap(buf, HeaderRoom, len(payload), netip.AddrPortFrom(local, uint16(50000+i)), dst, 64)
				if err != nil {
					t.Fatal(err)
				}
				pkts = append(pkts, Packet{Buf: pkt, Dst: local})
			}
			n, err := b.Send(pkts)
			if err != nil || n != len(pkts) {
				t.Fatalf("sent %d: %v", n, err)
			}
			msgs := make([]Message, 4)
			for i := range msgs {
				msgs[i].Buf = make([]byte, 2048)
			}
			got := 0
			for got < len(pkts) {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, err := c.ReadBatch(msgs)
				if err != nil {
					t.Fatalf("read after %d: %v", got, err)
				}
				for _, m := range msgs[:n] {
					i := int(m.Buf[0])
					if m.N != 6 || string(m.Buf[1:6]) != "hello" {
						t.Fatalf("payload %q", m.Buf[:m.N])
					}
					if m.Src != netip.AddrPortFrom(local, uint16(50000+i)) {
						t.Fatalf("src %s", m.Src)
					}
					if m.Local != local || m.IfIndex == 0 {
						t.Fatalf("local %s if %d", m.Local, m.IfIndex)
					}
				}
				got += n
			}
		})
	}
}

func TestReadDeadline(t *testing.T) {
	c, err := Listen(context.Background(), ListenConfig{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Batch: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	msgs := []Message{{Buf: make([]byte, 100)}}
	if _, err := c.ReadBatch(msgs); err == nil {
		t.Fatal("no deadline error")
	}
	go func() { time.Sleep(20 * time.Millisecond); c.Close() }()
	c.SetReadDeadline(time.Time{})
	if _, err := c.ReadBatch(msgs); !ErrClosed(err) {
		t.Fatalf("want closed, got %v", err)
	}
	_ = net.ErrClosed
}

func BenchmarkEncap8500(b *testing.B) {
	buf := make([]byte, HeaderRoom+8500)
	src, dst := netip.MustParseAddrPort("198.18.0.2:6081"), netip.MustParseAddrPort("198.18.0.1:40000")
	b.SetBytes(8500)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encap(buf, HeaderRoom, 8500, src, dst, 64); err != nil {
			b.Fatal(err)
		}
	}
}
