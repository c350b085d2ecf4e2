package mirror

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/tunnel/offload"
	"github.com/gwlbproxy/gwlbproxy/tunnel/udp"
)

// memSink keeps copies of written frames; block makes writes wait.
type memSink struct {
	mu     sync.Mutex
	frames [][]byte
	block  chan struct{}
}

func (s *memSink) write(b []byte) error {
	if s.block != nil {
		<-s.block
	}
	s.mu.Lock()
	s.frames = append(s.frames, append([]byte(nil), b...))
	s.mu.Unlock()
	return nil
}

func newTest(t *testing.T, cfg Config) (*Mirror, *memSink) {
	t.Helper()
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if cfg.QueuePackets == 0 {
		cfg.QueuePackets = 1 << 16
	}
	ms := &memSink{}
	m := newMirror(cfg, ms)
	m.start()
	return m, ms
}

// pkt is a parsed mirrored frame.
type pkt struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    byte
	win      uint16
	payload  []byte
	ipLen    int
	opts     []byte
}

// parse checks and decodes one frame: Ethernet, IPv4 (header checksum,
// lengths) or IPv6, TCP (checksum over the pseudo header).
func parse(t *testing.T, f []byte) pkt {
	t.Helper()
	if len(f) < 14 {
		t.Fatalf("short frame %d", len(f))
	}
	if bytes.Equal(f[0:6], devMAC[:]) || f[0]&1 != 0 {
		t.Fatalf("destination MAC %x is the device's or multicast", f[0:6])
	}
	et := binary.BigEndian.Uint16(f[12:])
	ip := f[14:]
	var p pkt
	var tcp []byte
	var pseudo uint64
	switch et {
	case 0x0800:
		if ip[0] != 0x45 || ip[9] != 6 {
			t.Fatalf("ipv4 header %x", ip[:20])
		}
		if offload.Fold(udp.Checksum(ip[:20], 0)) != 0xffff {
			t.Fatal("bad IPv4 header checksum")
		}
		tot := int(binary.BigEndian.Uint16(ip[2:]))
		if tot != len(ip) {
			t.Fatalf("ipv4 total %d, frame carries %d", tot, len(ip))
		}
		p.ipLen = tot
		s, _ := netip.AddrFromSlice(ip[12:16])
		d, _ := netip.AddrFromSlice(ip[16:20])
		tcp = ip[20:tot]
		pseudo = udp.Checksum(ip[12:20], 6+uint64(len(tcp)))
		p.src, p.dst = netip.AddrPortFrom(s, binary.BigEndian.Uint16(tcp[0:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(tcp[2:]))
	case 0x86dd:
		if ip[0]>>4 != 6 || ip[6] != 6 {
			t.Fatalf("ipv6 header %x", ip[:40])
		}
		pl := int(binary.BigEndian.Uint16(ip[4:]))
		if 40+pl != len(ip) {
			t.Fatalf("ipv6 payload length %d, frame carries %d", pl, len(ip)-40)
		}
		p.ipLen = 40 + pl
		s, _ := netip.AddrFromSlice(ip[8:24])
		d, _ := netip.AddrFromSlice(ip[24:40])
		tcp = ip[40:]
		pseudo = udp.Checksum(ip[8:40], 6+uint64(len(tcp)))
		p.src, p.dst = netip.AddrPortFrom(s, binary.BigEndian.Uint16(tcp[0:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(tcp[2:]))
	default:
		t.Fatalf("ethertype %#x", et)
	}
	if offload.Fold(udp.Checksum(tcp, pseudo)) != 0xffff {
		t.Fatal("bad TCP checksum")
	}
	off := int(tcp[12]>>4) * 4
	p.seq, p.ack = binary.BigEndian.Uint32(tcp[4:]), binary.BigEndian.Uint32(tcp[8:])
	p.flags, p.win = tcp[13], binary.BigEndian.Uint16(tcp[14:])
	p.opts, p.payload = tcp[20:off], tcp[off:]
	return p
}

// conversation replays frames through a strict TCP model of both ends and
// returns the reassembled bytes of each direction and how it ended.
type conversation struct {
	toServer, toClient []byte
	end                string // "fin" or "rst"
	packets            int
}

func reassemble(t *testing.T, frames [][]byte, client, server netip.AddrPort, mtu int) conversation {
	t.Helper()
	var c conversation
	var cnext, snext uint32 // next expected seq from client / server
	state := "closed"
	var cFin, sFin bool
	for i, f := range frames {
		if len(f)-14 > mtu {
			t.Fatalf("packet %d: IP length %d > mtu %d", i, len(f)-14, mtu)
		}
		p := parse(t, f)
		c.packets++
		fromClient := p.src == client && p.dst == server
		if !fromClient && !(p.src == server && p.dst == client) {
			t.Fatalf("packet %d: 5-tuple %v -> %v", i, p.src, p.dst)
		}
		switch state {
		case "closed":
			if !fromClient || p.flags != flagSYN || len(p.payload) != 0 || len(p.opts) == 0 {
				t.Fatalf("packet %d: want client SYN, got flags %#x", i, p.flags)
			}
			cnext = p.seq + 1
			state = "syn"
			continue
		case "syn":
			if fromClient || p.flags != flagSYN|flagACK || p.ack != cnext {
				t.Fatalf("packet %d: want SYN-ACK acking %d, got flags %#x ack %d", i, cnext, p.flags, p.ack)
			}
			snext = p.seq + 1
			state = "synack"
			continue
		case "synack":
			if !fromClient || p.flags != flagACK || p.seq != cnext || p.ack != snext {
				t.Fatalf("packet %d: want handshake ACK", i)
			}
			state = "est"
			continue
		case "done":
			t.Fatalf("packet %d after the end", i)
		}
		if p.flags&flagRST != 0 {
			if want := cnext; !fromClient || p.seq != want {
				t.Fatalf("packet %d: RST seq %d want %d", i, p.seq, want)
			}
			c.end, state = "rst", "done"
			continue
		}
		if p.flags&flagACK == 0 {
			t.Fatalf("packet %d: no ACK flag", i)
		}
		if fromClient {
			if p.seq != cnext || p.ack != snext {
				t.Fatalf("packet %d: client seq %d ack %d, want %d %d", i, p.seq, p.ack, cnext, snext)
			}
			c.toServer = append(c.toServer, p.payload...)
			cnext += uint32(len(p.payload))
			if p.flags&flagFIN != 0 {
				cnext++
				cFin = true
			}
		} else {
			if p.seq != snext || p.ack != cnext {
				t.Fatalf("packet %d: server seq %d ack %d, want %d %d", i, p.seq, p.ack, snext, cnext)
			}
			c.toClient = append(c.toClient, p.payload...)
			snext += uint32(len(p.payload))
			if p.flags&flagFIN != 0 {
				snext++
				sFin = true
			}
		}
		if cFin && sFin && fromClient && p.flags == flagACK && len(p.payload) == 0 {
			c.end, state = "fin", "done"
		}
	}
	return c
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i/251)
	}
	return b
}

func TestConversation(t *testing.T) {
	for _, tc := range []struct {
		name           string
		client, server string
		mtu            int
	}{
		{"ipv4", "198.18.0.10:40001", "203.0.113.5:443", 1500},
		{"ipv6", "[2001:db8::10]:40002", "[2001:db8:1::5]:443", 1500},
		{"ipv4-mapped", "[::ffff:198.18.0.11]:40003", "[::ffff:203.0.113.6]:80", 1280},
		{"ipv6-jumbo", "[2001:db8::11]:40004", "[2001:db8:1::6]:8443", 9001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, ms := newTest(t, Config{MTU: tc.mtu})
			client, server := netip.MustParseAddrPort(tc.client), netip.MustParseAddrPort(tc.server)
			s := m.Start(client, server)
			req := []byte("GET /x HTTP/1.1\r\nHost: good.test\r\n\r\n")
			resp := pattern(1<<20+17, 3)
			s.Client(req)
			s.Server(resp[:1000])
			s.Server(resp[1000:])
			s.Client(req)
			s.Close()
			s.Close()
			s.Server([]byte("after close"))
			m.Close()
			cl, sv := netip.AddrPortFrom(client.Addr().Unmap(), client.Port()), netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
			c := reassemble(t, ms.frames, cl, sv, tc.mtu)
			if !bytes.Equal(c.toServer, append(append([]byte(nil), req...), req...)) {
				t.Errorf("client->server reassembled %d bytes", len(c.toServer))
			}
			if !bytes.Equal(c.toClient, resp) {
				t.Errorf("server->client reassembled %d bytes, want %d", len(c.toClient), len(resp))
			}
			if c.end != "fin" {
				t.Errorf("ended %q, want fin", c.end)
			}
			st := m.Stats()
			if st.Packets != uint64(c.packets) || st.Dropped != 0 || st.Streams != 1 || st.Bytes != uint64(2*len(req)+len(resp)) {
				t.Errorf("stats %+v, packets seen %d", st, c.packets)
			}
		})
	}
}

func TestAbortSendsRST(t *testing.T) {
	m, ms := newTest(t, Config{})
	cl, sv := netip.MustParseAddrPort("198.18.0.10:40010"), netip.MustParseAddrPort("203.0.113.5:80")
	s := m.Start(cl, sv)
	s.Client([]byte("GET / HTTP/1.1\r\n\r\n"))
	s.Abort()
	s.Close()
	m.Close()
	if c := reassemble(t, ms.frames, cl, sv, 1500); c.end != "rst" || len(c.toServer) != 18 {
		t.Fatalf("end %q, %d bytes", c.end, len(c.toServer))
	}
}

func TestByteCap(t *testing.T) {
	m, ms := newTest(t, Config{MaxBytesPerConn: 5000})
	cl, sv := netip.MustParseAddrPort("198.18.0.10:40011"), netip.MustParseAddrPort("203.0.113.5:80")
	s := m.Start(cl, sv)
	s.Client(pattern(1000, 1))
	s.Server(pattern(10000, 2))
	s.Server(pattern(10000, 3))
	s.Close()
	m.Close()
	c := reassemble(t, ms.frames, cl, sv, 1500)
	if c.end != "rst" || len(c.toServer)+len(c.toClient) != 5000 || !bytes.Equal(c.toClient, pattern(10000, 2)[:4000]) {
		t.Fatalf("end %q, %d+%d bytes", c.end, len(c.toServer), len(c.toClient))
	}
	if m.Stats().Capped != 1 {
		t.Fatalf("capped %d", m.Stats().Capped)
	}
}

// TestQueueFullDrops: a stalled device never blocks the proxy; the
// excess is counted.
func TestQueueFullDrops(t *testing.T) {
	ms := &memSink{block: make(chan struct{})}
	m := newMirror(Config{MTU: 1500, QueuePackets: 16}, ms)
	m.start()
	s := m.Start(netip.MustParseAddrPort("198.18.0.10:40012"), netip.MustParseAddrPort("203.0.113.5:80"))
	s.Server(pattern(1<<20, 1)) // ~720 packets into a queue of 16 behind a stalled writer
	s.Close()
	st := m.Stats()
	if st.Dropped < 600 {
		t.Fatalf("dropped %d, want most of ~750", st.Dropped)
	}
	close(ms.block)
	m.Close()
	if got := m.Stats(); got.Packets != uint64(len(ms.frames)) || got.Packets > 18 || got.Packets+got.Dropped < 700 {
		t.Fatalf("stats %+v, frames %d", got, len(ms.frames))
	}
}

func TestNilAndUnmirrorable(t *testing.T) {
	var m *Mirror
	s := m.Start(netip.MustParseAddrPort("198.18.0.1:1"), netip.MustParseAddrPort("203.0.113.1:2"))
	s.Client([]byte("x"))
	s.Server([]byte("x"))
	s.Abort()
	s.Close()
	if m.Close() != nil || m.Stats() != (Stats{}) {
		t.Fatal("nil mirror")
	}
	m2, _ := newTest(t, Config{})
	if m2.Start(netip.MustParseAddrPort("198.18.0.1:1"), netip.MustParseAddrPort("[2001:db8::1]:2")) != nil {
		t.Fatal("mixed families mirrored")
	}
	if m2.Start(netip.AddrPort{}, netip.MustParseAddrPort("203.0.113.1:2")) != nil {
		t.Fatal("invalid address mirrored")
	}
	if m2.Stats().Unmirrorable != 2 {
		t.Fatalf("%+v", m2.Stats())
	}
	m2.Close()
	if m2.Start(netip.MustParseAddrPort("198.18.0.1:1"), netip.MustParseAddrPort("203.0.113.1:2")) != nil {
		t.Fatal("closed mirror started a stream")
	}
}

func TestConcurrentStreams(t *testing.T) {
	m, ms := newTest(t, Config{})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := m.Start(netip.MustParseAddrPort(fmt.Sprintf("198.18.0.%d:4000%d", i+1, i)), netip.MustParseAddrPort("203.0.113.5:80"))
			var inner sync.WaitGroup
			inner.Add(2)
			go func() { s.Client(pattern(50000, byte(i))); inner.Done() }()
			go func() { s.Server(pattern(70000, byte(i+1))); inner.Done() }()
			inner.Wait()
			s.Close()
		}()
	}
	wg.Wait()
	m.Close()
	// Split per flow and check each one.
	by := map[netip.Addr][][]byte{}
	for _, f := range ms.frames {
		p := parse(t, f)
		a := p.src.Addr()
		if p.src.Port() == 80 {
			a = p.dst.Addr()
		}
		by[a] = append(by[a], f)
	}
	for i := 0; i < 8; i++ {
		cl := netip.MustParseAddrPort(fmt.Sprintf("198.18.0.%d:4000%d", i+1, i))
		c := reassemble(t, by[cl.Addr()], cl, netip.MustParseAddrPort("203.0.113.5:80"), 1500)
		if !bytes.Equal(c.toServer, pattern(50000, byte(i))) || !bytes.Equal(c.toClient, pattern(70000, byte(i+1))) || c.end != "fin" {
			t.Errorf("flow %d: %d/%d bytes, end %q", i, len(c.toServer), len(c.toClient), c.end)
		}
	}
}

func BenchmarkMirrorMB(b *testing.B) {
	ms := &discard{}
	m := newMirror(Config{MTU: 1500, QueuePackets: 1 << 16}, ms)
	m.start()
	defer m.Close()
	data := pattern(1<<20, 1)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		s := m.Start(netip.MustParseAddrPort("198.18.0.10:40000"), netip.MustParseAddrPort("203.0.113.5:80"))
		s.Server(data)
		s.Close()
	}
}

type discard struct{}

func (discard) write([]byte) error { return nil }
