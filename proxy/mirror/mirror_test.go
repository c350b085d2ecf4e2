package mirror

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/mirror/mirrortest"
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

// reassemble is mirrortest.Reassemble failing the test on error.
func reassemble(t *testing.T, frames [][]byte, client, server netip.AddrPort, mtu int) mirrortest.Conversation {
	t.Helper()
	c, err := mirrortest.Reassemble(frames, client, server, mtu)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func parse(t *testing.T, f []byte) mirrortest.Packet {
	t.Helper()
	p, err := mirrortest.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	if p.DstMAC == devMAC {
		t.Fatal("frame addressed to the device itself")
	}
	return p
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
			if !bytes.Equal(c.ToServer, append(append([]byte(nil), req...), req...)) {
				t.Errorf("client->server reassembled %d bytes", len(c.ToServer))
			}
			if !bytes.Equal(c.ToClient, resp) {
				t.Errorf("server->client reassembled %d bytes, want %d", len(c.ToClient), len(resp))
			}
			if c.End != "fin" {
				t.Errorf("ended %q, want fin", c.End)
			}
			st := m.Stats()
			if st.Packets != uint64(c.Packets) || st.Dropped != 0 || st.Streams != 1 || st.Bytes != uint64(2*len(req)+len(resp)) {
				t.Errorf("stats %+v, packets seen %d", st, c.Packets)
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
	if c := reassemble(t, ms.frames, cl, sv, 1500); c.End != "rst" || len(c.ToServer) != 18 {
		t.Fatalf("end %q, %d bytes", c.End, len(c.ToServer))
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
	if c.End != "rst" || len(c.ToServer)+len(c.ToClient) != 5000 || !bytes.Equal(c.ToClient, pattern(10000, 2)[:4000]) {
		t.Fatalf("end %q, %d+%d bytes", c.End, len(c.ToServer), len(c.ToClient))
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
		a := p.Src.Addr()
		if p.Src.Port() == 80 {
			a = p.Dst.Addr()
		}
		by[a] = append(by[a], f)
	}
	for i := 0; i < 8; i++ {
		cl := netip.MustParseAddrPort(fmt.Sprintf("198.18.0.%d:4000%d", i+1, i))
		c := reassemble(t, by[cl.Addr()], cl, netip.MustParseAddrPort("203.0.113.5:80"), 1500)
		if !bytes.Equal(c.ToServer, pattern(50000, byte(i))) || !bytes.Equal(c.ToClient, pattern(70000, byte(i+1))) || c.End != "fin" {
			t.Errorf("flow %d: %d/%d bytes, end %q", i, len(c.ToServer), len(c.ToClient), c.End)
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
