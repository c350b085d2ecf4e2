// Package mirror is the decryption mirror: it hands the cleartext of
// bumped and plain HTTP connections to an IDS as synthetic TCP/IP packets
// written into a tap device, the way a next-generation firewall's
// "decryption mirror port" does.
//
// Each mirrored connection becomes one TCP connection on the wire with the
// original 5-tuple (client address:port <-> original destination
// address:port): a three-way handshake, data segments no larger than the
// device MTU with consistent sequence and acknowledgement numbers, a pure
// ACK from the receiving side after each burst (an IDS stream engine
// inspects acknowledged data), and FIN/ACK at the end, or RST when the
// connection was aborted or the per-connection byte cap was reached. IP and
// TCP checksums are correct, so an IDS needs no "checksum-validation: no".
//
// Frames are Ethernet (tap) with locally administered MAC addresses that
// are not the device's own: the kernel classifies them PACKET_OTHERHOST and
// drops them before IP, so mirrored packets are seen by packet capture
// (AF_PACKET, as Suricata uses) and never routed or answered.
//
// What is mirrored: plain HTTP connections and bumped connections served as
// HTTP/1.x (including a WebSocket after its upgrade), exactly as the client
// sent and received them. Bumped HTTP/2 connections are not mirrored (their
// streams are not translated to HTTP/1.1; gwlbproxy_mirror_h2_not_mirrored_total
// counts them): operators who need them mirrored set proxy.http2 to false.
// Spliced connections are never decrypted, so never mirrored.
//
// Mirroring must never slow the proxy: packets go through a bounded queue
// to one writer goroutine, and a full queue drops packets (counted). With
// the mirror off the proxy holds a nil *Stream and every method is a no-op.
package mirror

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
)

// Config is the proxy.mirror section of the configuration.
type Config struct {
	// Enabled turns the mirror on. Off by default: decrypted traffic is
	// only handed out when the operator asks.
	Enabled bool `yaml:"enabled"`
	// Interface is the tap device the proxy creates (and removes at exit)
	// for the IDS to capture.
	Interface string `yaml:"interface"`
	// MTU of the device; every mirrored IP packet is at most this long.
	MTU int `yaml:"mtu"`
	// MaxBytesPerConn caps the payload mirrored per connection (both
	// directions); beyond it the mirrored stream ends with RST and
	// gwlbproxy_mirror_capped_total counts it. 0 means no cap.
	MaxBytesPerConn int64 `yaml:"max_bytes_per_conn"`
	// QueuePackets bounds the packets waiting for the writer; when full,
	// packets are dropped and counted rather than slowing the proxy. Frame
	// buffers are recycled, so the mirror holds up to QueuePackets x
	// (MTU+14) bytes after a burst.
	QueuePackets int `yaml:"queue_packets"`
}

// DefaultConfig is off, with the defaults used when turned on.
func DefaultConfig() Config {
	return Config{Interface: "gwlbmirror0", MTU: 1500, MaxBytesPerConn: 64 << 20, QueuePackets: 8192}
}

// Validate checks c, also when disabled (a wrong value is reported before
// someone turns the mirror on); messages start with the offending yaml key.
func (c *Config) Validate() error {
	if c.Interface == "" || len(c.Interface) >= unix.IFNAMSIZ {
		return fmt.Errorf("interface: %q is not a valid interface name (1..%d bytes)", c.Interface, unix.IFNAMSIZ-1)
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		return fmt.Errorf("mtu: %d out of range 1280..65535", c.MTU)
	}
	if c.MaxBytesPerConn < 0 {
		return fmt.Errorf("max_bytes_per_conn: %d is negative", c.MaxBytesPerConn)
	}
	if c.QueuePackets < 1 || c.QueuePackets > 1<<20 {
		return fmt.Errorf("queue_packets: %d out of range 1..1048576", c.QueuePackets)
	}
	return nil
}

// Stats are the mirror's counters.
type Stats struct {
	Streams      uint64 // mirrored connections started
	Packets      uint64 // packets written to the device
	Bytes        uint64 // payload bytes written
	Dropped      uint64 // packets dropped because the queue was full
	Capped       uint64 // streams ended with RST at MaxBytesPerConn
	WriteErrors  uint64 // writes the device refused
	Unmirrorable uint64 // connections not mirrored (address families differ, invalid addresses)
}

// Sink receives finished frames. *Mirror writes them to the tap device;
// tests collect them.
type sink interface {
	write(frame []byte) error
}

// Mirror owns the device, the queue and the writer.
type Mirror struct {
	cfg   Config
	out   sink
	dev   *os.File
	nl    *netlink.Handle // in the namespace the device was created in
	link  netlink.Link
	queue chan *frame
	done  chan struct{}
	// free recycles frames between the builders and the writer (a
	// sync.Pool empties at every GC and churns across Ps).
	free      chan *frame
	frameSize int

	closeOnce sync.Once
	closed    atomic.Bool
	mu        sync.RWMutex // held shared while enqueueing, exclusively to close the queue

	streams, packets, bytes, dropped, capped, writeErrs, unmirrorable atomic.Uint64
}

// frame is one Ethernet frame being built or queued.
type frame struct {
	n int
	b []byte
}

// EtherTypes of the mirrored frames (x/sys/unix names them on Linux only).
const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
)

var (
	devMAC    = [6]byte{0x02, 0x67, 0x77, 0x6c, 0x62, 0x00} // the tap device itself
	clientMAC = [6]byte{0x02, 0x67, 0x77, 0x6c, 0x62, 0x01} // "client" side of mirrored flows
	serverMAC = [6]byte{0x02, 0x67, 0x77, 0x6c, 0x62, 0x02} // "server" side
)

type fdSink struct{ f *os.File }

func (s fdSink) write(b []byte) error {
	_, err := s.f.Write(b)
	return err
}

func newMirror(cfg Config, out sink) *Mirror {
	m := &Mirror{cfg: cfg, out: out, queue: make(chan *frame, cfg.QueuePackets), done: make(chan struct{})}
	size := 14 + cfg.MTU
	// Frames are allocated on demand and kept for reuse: memory follows
	// the peak queue depth, at most QueuePackets frames (12 MiB at the
	// defaults).
	m.free, m.frameSize = make(chan *frame, cfg.QueuePackets+64), size
	return m
}

func (m *Mirror) start() { go m.writer() }

func (m *Mirror) getFrame() *frame {
	select {
	case f := <-m.free:
		return f
	default:
		return &frame{b: make([]byte, m.frameSize)}
	}
}

func (m *Mirror) putFrame(f *frame) {
	select {
	case m.free <- f:
	default:
	}
}

// writer writes queued frames in order, one write per frame (a tap device
// takes one frame per write).
func (m *Mirror) writer() {
	defer close(m.done)
	for f := range m.queue {
		if err := m.out.write(f.b[:f.n]); err != nil {
			m.writeErrs.Add(1)
		} else {
			m.packets.Add(1)
		}
		m.putFrame(f)
	}
}

// Close stops accepting packets, writes what is queued, and removes the
// device. Streams still open afterwards become no-ops.
func (m *Mirror) Close() error {
	if m == nil {
		return nil
	}
	var err error
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.closed.Store(true)
		close(m.queue)
		m.mu.Unlock()
		<-m.done
		if m.dev != nil {
			err = m.dev.Close()
		}
		if m.link != nil {
			// Closing the only queue of a non-persistent tap removes the
			// device already; delete it in case someone made it persistent.
			if l, lerr := m.nl.LinkByIndex(m.link.Attrs().Index); lerr == nil && l.Attrs().Name == m.cfg.Interface {
				m.nl.LinkDel(l)
			}
		}
		if m.nl != nil {
			m.nl.Close()
		}
	})
	return err
}

// Stats returns the counters.
func (m *Mirror) Stats() Stats {
	if m == nil {
		return Stats{}
	}
	return Stats{
		Streams: m.streams.Load(), Packets: m.packets.Load(), Bytes: m.bytes.Load(), Dropped: m.dropped.Load(),
		Capped: m.capped.Load(), WriteErrors: m.writeErrs.Load(), Unmirrorable: m.unmirrorable.Load(),
	}
}

// enqueue hands f to the writer or drops it when the queue is full.
func (m *Mirror) enqueue(f *frame) {
	m.mu.RLock()
	if m.closed.Load() {
		m.mu.RUnlock()
		m.putFrame(f)
		return
	}
	select {
	case m.queue <- f:
	default:
		m.dropped.Add(1)
		m.putFrame(f)
	}
	m.mu.RUnlock()
}

// Stream is one mirrored connection. Its methods are called from the
// connection's goroutines (one reader, one writer at a time: Client and
// Server may run concurrently), and are no-ops on a nil *Stream.
type Stream struct {
	m      *Mirror
	v6     bool
	client netip.AddrPort
	server netip.AddrPort
	mss    int

	mu      sync.Mutex
	cseq    uint32 // next sequence number client -> server
	sseq    uint32 // next sequence number server -> client
	ipid    uint16
	total   int64
	done    bool
	aborted bool
}

// TCP flags.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagPSH = 0x08
	flagACK = 0x10
)

// windowScale is advertised in both SYNs, so the 16-bit window field
// covers 8 MiB: bursts are acknowledged every ackEvery bytes anyway.
const (
	windowScale = 7
	ackEvery    = 32 << 10
)

// Start begins mirroring a connection from client to server (the original
// destination) with a three-way handshake. It returns nil (mirroring
// nothing) when m is nil or the addresses cannot be mirrored.
func (m *Mirror) Start(client, server netip.AddrPort) *Stream {
	if m == nil || m.closed.Load() {
		return nil
	}
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	if !client.IsValid() || !server.IsValid() || client.Addr().Is4() != server.Addr().Is4() {
		m.unmirrorable.Add(1)
		return nil
	}
	s := &Stream{m: m, v6: client.Addr().Is6(), client: netip.AddrPortFrom(client.Addr().WithZone(""), client.Port()),
		server: netip.AddrPortFrom(server.Addr().WithZone(""), server.Port())}
	hdr := 20 + 20
	if s.v6 {
		hdr = 40 + 20
	}
	s.mss = m.cfg.MTU - hdr
	var isn [8]byte
	rand.Read(isn[:])
	s.cseq = binary.BigEndian.Uint32(isn[:4])
	s.sseq = binary.BigEndian.Uint32(isn[4:])
	m.streams.Add(1)
	s.mu.Lock()
	s.emit(true, flagSYN, s.cseq, 0, nil)
	s.cseq++
	s.emit(false, flagSYN|flagACK, s.sseq, s.cseq, nil)
	s.sseq++
	s.emit(true, flagACK, s.cseq, s.sseq, nil)
	s.mu.Unlock()
	return s
}

// Client mirrors p, sent by the client to the server.
func (s *Stream) Client(p []byte) { s.data(true, p) }

// Server mirrors p, sent by the server (the proxy, on its behalf) to the
// client.
func (s *Stream) Server(p []byte) { s.data(false, p) }

func (s *Stream) data(fromClient bool, p []byte) {
	if s == nil || len(p) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	if max := s.m.cfg.MaxBytesPerConn; max > 0 && s.total+int64(len(p)) > max {
		// Mirror up to the cap, then end the stream with RST.
		p = p[:max-s.total]
		s.segments(fromClient, p)
		s.total = max
		s.m.capped.Add(1)
		s.reset()
		return
	}
	s.total += int64(len(p))
	s.segments(fromClient, p)
}

// segments emits p as MSS-sized segments and an ACK from the receiver
// every ackEvery bytes and at the end.
func (s *Stream) segments(fromClient bool, p []byte) {
	sinceAck := 0
	for len(p) > 0 {
		n := min(len(p), s.mss)
		flags := byte(flagACK)
		if n == len(p) {
			flags |= flagPSH
		}
		if fromClient {
			s.emit(true, flags, s.cseq, s.sseq, p[:n])
			s.cseq += uint32(n)
		} else {
			s.emit(false, flags, s.sseq, s.cseq, p[:n])
			s.sseq += uint32(n)
		}
		s.m.bytes.Add(uint64(n))
		p = p[n:]
		if sinceAck += n; sinceAck >= ackEvery || len(p) == 0 {
			s.emit(!fromClient, flagACK, s.seq(!fromClient), s.seq(fromClient), nil)
			sinceAck = 0
		}
	}
}

func (s *Stream) seq(client bool) uint32 {
	if client {
		return s.cseq
	}
	return s.sseq
}

// Abort marks the connection as ended abnormally: Close then sends RST.
func (s *Stream) Abort() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.aborted = true
	s.mu.Unlock()
}

// Close ends the mirrored connection: FIN from the client, FIN/ACK from the
// server, ACK from the client; or RST when aborted. Idempotent.
func (s *Stream) Close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	if s.aborted {
		s.reset()
		return
	}
	s.done = true
	s.emit(true, flagFIN|flagACK, s.cseq, s.sseq, nil)
	s.cseq++
	s.emit(false, flagFIN|flagACK, s.sseq, s.cseq, nil)
	s.sseq++
	s.emit(true, flagACK, s.cseq, s.sseq, nil)
}

// reset ends the stream with RST from the client side (s.mu held).
func (s *Stream) reset() {
	s.done = true
	s.emit(true, flagRST|flagACK, s.cseq, s.sseq, nil)
}

// emit builds one frame and queues it (s.mu held).
func (s *Stream) emit(fromClient bool, flags byte, seq, ack uint32, payload []byte) {
	f := s.m.getFrame()
	src, dst := s.client, s.server
	smac, dmac := clientMAC, serverMAC
	if !fromClient {
		src, dst = dst, src
		smac, dmac = dmac, smac
	}
	s.ipid++
	f.n = build(f.b, smac, dmac, src, dst, s.ipid, flags, seq, ack, payload)
	s.m.enqueue(f)
}

// build writes an Ethernet + IPv4/IPv6 + TCP frame into b and returns its
// length. b must hold 14 + IP header + 20 (+4 for SYN options) + payload.
func build(b []byte, smac, dmac [6]byte, src, dst netip.AddrPort, ipid uint16, flags byte, seq, ack uint32, payload []byte) int {
	copy(b[0:6], dmac[:])
	copy(b[6:12], smac[:])
	tcpLen := 20
	if flags&flagSYN != 0 {
		tcpLen = 28 // MSS and window scale options
	}
	ip := b[14:]
	var ipLen int
	var pseudo uint64
	if src.Addr().Is4() {
		binary.BigEndian.PutUint16(b[12:], etherTypeIPv4)
		ipLen = 20
		total := ipLen + tcpLen + len(payload)
		ip[0], ip[1] = 0x45, 0
		binary.BigEndian.PutUint16(ip[2:], uint16(total))
		binary.BigEndian.PutUint16(ip[4:], ipid)
		ip[6], ip[7] = 0x40, 0 // DF
		ip[8], ip[9] = 64, unix.IPPROTO_TCP
		ip[10], ip[11] = 0, 0
		s4, d4 := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:16], s4[:])
		copy(ip[16:20], d4[:])
		csum.IPv4Header(ip[:20])
		pseudo = csum.Sum(ip[12:20], uint64(unix.IPPROTO_TCP)+uint64(tcpLen+len(payload)))
	} else {
		binary.BigEndian.PutUint16(b[12:], etherTypeIPv6)
		ipLen = 40
		binary.BigEndian.PutUint32(ip[0:], 6<<28)
		binary.BigEndian.PutUint16(ip[4:], uint16(tcpLen+len(payload)))
		ip[6], ip[7] = unix.IPPROTO_TCP, 64
		s16, d16 := src.Addr().As16(), dst.Addr().As16()
		copy(ip[8:24], s16[:])
		copy(ip[24:40], d16[:])
		pseudo = csum.Sum(ip[8:40], uint64(unix.IPPROTO_TCP)+uint64(tcpLen+len(payload)))
	}
	t := ip[ipLen:]
	binary.BigEndian.PutUint16(t[0:], src.Port())
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], ack)
	t[12] = byte(tcpLen/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], 0xffff)
	t[16], t[17], t[18], t[19] = 0, 0, 0, 0
	if tcpLen == 28 {
		mss := 1460
		if src.Addr().Is4() {
			mss = len(b) - 14 - 40
		} else {
			mss = len(b) - 14 - 60
		}
		t[20], t[21] = 2, 4 // MSS
		binary.BigEndian.PutUint16(t[22:], uint16(mss))
		t[24], t[25], t[26], t[27] = 1, 3, 3, windowScale // NOP, window scale
		binary.BigEndian.PutUint16(t[14:], 0xffff)        // unscaled in SYNs
	}
	copy(t[tcpLen:], payload)
	seg := t[:tcpLen+len(payload)]
	binary.BigEndian.PutUint16(t[16:], ^csum.Fold(csum.Sum(seg, pseudo)))
	return 14 + ipLen + len(seg)
}

// NewWriter returns a mirror that hands each frame, in order on one
// goroutine, to write instead of a tap device: for tests, benchmarks and
// other sinks. write must not keep the slice. cfg is validated as if
// enabled.
func NewWriter(cfg Config, write func(frame []byte) error) (*Mirror, error) {
	cfg.Enabled = true
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	m := newMirror(cfg, funcSink(write))
	m.start()
	return m, nil
}

type funcSink func([]byte) error

func (f funcSink) write(b []byte) error { return f(b) }

// Collectors exports the counters as Prometheus metrics
// (gwlbproxy_mirror_*).
func (m *Mirror) Collectors() []prometheus.Collector {
	c := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "gwlbproxy_mirror_" + name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	return []prometheus.Collector{
		c("streams_total", "Connections mirrored.", &m.streams),
		c("packets_total", "Packets written to the mirror device.", &m.packets),
		c("bytes_total", "Cleartext payload bytes mirrored.", &m.bytes),
		c("dropped_packets_total", "Packets dropped because the mirror queue was full.", &m.dropped),
		c("capped_total", "Mirrored connections ended with RST at max_bytes_per_conn.", &m.capped),
		c("write_errors_total", "Packets the mirror device refused.", &m.writeErrs),
		c("unmirrorable_total", "Connections not mirrored (address families differ or unknown addresses).", &m.unmirrorable),
	}
}
