//go:build linux

package gwlbsim

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

// Mode selects what Bench measures.
type Mode string

const (
	// ModeTunnel sends GENEVE to the appliance and counts what returns to
	// the GWLB port: the full decap -> tun -> forward -> tun -> encap path.
	ModeTunnel Mode = "tunnel"
	// ModePlain sends the bare inner packets through the appliance
	// namespace to the sink: plain kernel forwarding, the baseline.
	ModePlain Mode = "plain"
)

// BenchConfig configures Bench.
type BenchConfig struct {
	Topology *Topology
	Mode     Mode
	// PayloadSize is the inner UDP payload in bytes (64; 8472 makes an
	// 8500-byte inner packet, GWLB's maximum).
	PayloadSize int
	// Flows is the number of distinct inner 5-tuples (and, as GWLB does,
	// outer source ports).
	Flows int
	// EndpointID and AttachmentID go into the GENEVE options; zero takes
	// the topology's first endpoint (or 1, 2 without endpoints).
	EndpointID, AttachmentID uint64
	// Step is how long each offered rate is held; Drain how long to wait
	// for stragglers after each step.
	Step, Drain time.Duration
	// MaxLoss is the acceptable loss fraction (0.01 = 1%).
	MaxLoss float64
	// Steps bounds the rate search (after the flat-out probe).
	Steps int
	// Batch is the sendmmsg/recvmmsg batch size.
	Batch int
	// CPU pins the generator and receiver threads to one CPU; -1 leaves
	// them unpinned.
	CPU int
	// Rates, if set, replaces the flat-out probe and the search: exactly
	// these offered rates are held, one step each (FlatOut reports the
	// first). A fixed rate below saturation is the steady way to compare
	// the CPU cost per packet of two builds.
	Rates []float64
}

// DefaultBenchConfig returns a 64-byte, 64-flow tunnel benchmark with 1 s
// steps.
func DefaultBenchConfig(t *Topology) BenchConfig {
	return BenchConfig{Topology: t, Mode: ModeTunnel, PayloadSize: 64, Flows: 64,
		Step: time.Second, Drain: 300 * time.Millisecond, MaxLoss: 0.01, Steps: 8, Batch: 64, CPU: -1}
}

// StepResult is one offered rate.
type StepResult struct {
	OfferedPPS  float64 `json:"offered_pps"` // 0 = flat out
	SentPPS     float64 `json:"sent_pps"`
	ReceivedPPS float64 `json:"received_pps"`
	Loss        float64 `json:"loss"`
}

// BenchResult is what Bench measured.
type BenchResult struct {
	Mode        Mode `json:"mode"`
	PayloadSize int  `json:"payload_size"`
	InnerSize   int  `json:"inner_size"` // inner IP packet bytes
	Flows       int  `json:"flows"`
	// BestPPS is the highest received rate at which loss stayed within
	// MaxLoss; BestGbps the same in inner-packet bits.
	BestPPS  float64 `json:"best_pps"`
	BestGbps float64 `json:"best_gbps"`
	// BadLength counts received datagrams whose size was not that of a
	// correctly returned packet; they are not counted as received.
	BadLength uint64 `json:"bad_length"`
	// FlatOut is the probe sending as fast as the generator can.
	FlatOut StepResult   `json:"flat_out"`
	Steps   []StepResult `json:"steps"`
	// SenderCPU and ReceiverCPU are the generator's own thread CPU times
	// over the whole run; compare with Duration to see whether the
	// generator, not the appliance, was the limit.
	SenderCPU   time.Duration `json:"sender_cpu_ns"`
	ReceiverCPU time.Duration `json:"receiver_cpu_ns"`
	Duration    time.Duration `json:"duration_ns"`
	// Sending is the wall time spent sending (the steps without their
	// drains): the generator's CPU share is (SenderCPU+ReceiverCPU) /
	// Sending, as Duration would understate it by the idle drains.
	Sending time.Duration `json:"sending_ns"`
}

func (c *BenchConfig) fill() error {
	d := DefaultBenchConfig(c.Topology)
	if c.Topology == nil {
		return errors.New("gwlbsim bench: no topology")
	}
	if c.Mode == "" {
		c.Mode = d.Mode
	}
	if c.Mode != ModeTunnel && c.Mode != ModePlain {
		return fmt.Errorf("gwlbsim bench: mode %q", c.Mode)
	}
	if c.PayloadSize <= 0 {
		c.PayloadSize = d.PayloadSize
	}
	if c.PayloadSize > innerMTU-28 {
		return fmt.Errorf("gwlbsim bench: payload %d over %d", c.PayloadSize, innerMTU-28)
	}
	if c.Flows <= 0 {
		c.Flows = d.Flows
	}
	if c.Flows > 50000 {
		return fmt.Errorf("gwlbsim bench: %d flows over 50000", c.Flows)
	}
	if c.EndpointID == 0 {
		c.EndpointID, c.AttachmentID = 1, 2
		if len(c.Topology.Endpoints) > 0 {
			c.EndpointID, c.AttachmentID = c.Topology.Endpoints[0].ID, c.Topology.Endpoints[0].AttachmentID
		}
	}
	if c.Step <= 0 {
		c.Step = d.Step
	}
	if c.Drain <= 0 {
		c.Drain = d.Drain
	}
	if c.MaxLoss <= 0 {
		c.MaxLoss = d.MaxLoss
	}
	if c.Steps <= 0 {
		c.Steps = d.Steps
	}
	if c.Batch <= 0 || c.Batch > 1024 {
		c.Batch = d.Batch
	}
	return nil
}

// benchPorts: inner destination port and the plain-mode sink port.
const benchPort = 9000

// buildPackets pre-builds one wire packet per flow.
func buildPackets(c *BenchConfig) ([][]byte, netip.Addr, int) {
	payload := make([]byte, c.PayloadSize)
	for i := range payload {
		payload[i] = byte(i)
	}
	pkts := make([][]byte, c.Flows)
	var dst netip.Addr
	innerLen := 28 + c.PayloadSize
	for i := range pkts {
		sport := uint16(20000 + i)
		if c.Mode == ModePlain {
			dst = PlainDst.Addr().Next()
			pkts[i] = zeroUDPCsum(buildUDP4(nil, netip.AddrPortFrom(GWLBAddr, sport), netip.AddrPortFrom(dst, benchPort), payload))
			continue
		}
		inner := buildUDP4(nil, netip.AddrPortFrom(ClientAddr, sport), netip.AddrPortFrom(ServerAddr, benchPort), payload)
		g := geneve.AppendHeader(nil, 0, geneve.ProtoIPv4, c.EndpointID, c.AttachmentID, 0x5eed0000+uint32(i))
		g = append(g, inner...)
		dst = ApplianceAddr
		// GWLB's per-flow outer source port.
		pkts[i] = zeroUDPCsum(buildUDP4(nil, netip.AddrPortFrom(GWLBAddr, uint16(10000+i)), netip.AddrPortFrom(ApplianceAddr, geneve.Port), g))
	}
	return pkts, dst, innerLen
}

// zeroUDPCsum clears the (outer) UDP checksum of an IPv4/UDP packet: legal
// for IPv4, and what a receiving NIC that verified it would leave the
// kernel to do, so neither path pays for checksumming 8.5 kB in software.
// The inner packet's checksum stays valid.
func zeroUDPCsum(p []byte) []byte {
	p[ipv4Len+6], p[ipv4Len+7] = 0, 0
	return p
}

// mmsgs is a prepared sendmmsg/recvmmsg vector.
type mmsgs struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
}

// newSendVec prepares frames for sendmmsg on a bound packet socket (no
// per-message address).
func newSendVec(pkts [][]byte, batch int) *mmsgs {
	n := (len(pkts) + batch - 1) / batch * batch
	if n < batch {
		n = batch
	}
	v := &mmsgs{hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n)}
	for i := range v.hdrs {
		p := pkts[i%len(pkts)]
		v.iovs[i].Base = &p[0]
		v.iovs[i].SetLen(len(p))
		h := &v.hdrs[i].Hdr
		h.Iov = &v.iovs[i]
		h.SetIovlen(1)
	}
	return v
}

func newRecvVec(batch, size int) *mmsgs {
	v := &mmsgs{hdrs: make([]unix.Mmsghdr, batch), iovs: make([]unix.Iovec, batch)}
	for i := range v.hdrs {
		b := make([]byte, size)
		v.iovs[i].Base = &b[0]
		v.iovs[i].SetLen(size)
		v.hdrs[i].Hdr.Iov = &v.iovs[i]
		v.hdrs[i].Hdr.SetIovlen(1)
	}
	return v
}

func mmsg(trap uintptr, fd int, v []unix.Mmsghdr, flags int) (int, error) {
	n, _, e := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&v[0])), uintptr(len(v)), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rxBatch is the receiver's recvmmsg vector: a millisecond's worth at
// 1 Mpps fits a few calls.
const rxBatch = 256

func threadCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_THREAD, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func pin(cpu int) {
	if cpu < 0 {
		return
	}
	var set unix.CPUSet
	set.Set(cpu)
	_ = unix.SchedSetaffinity(0, &set)
}

// Bench measures the appliance (ModeTunnel) or plain forwarding
// (ModePlain) on cfg.Topology. Packets are prebuilt Ethernet frames
// written by an AF_PACKET socket on the GWLB namespace's underlay link
// (see packetSender), with outer UDP checksum 0. It first sends flat out, then searches for
// the highest offered rate with loss within MaxLoss. For ModeTunnel the
// appliance must be running and nothing else may be bound to
// GWLBAddr:6081 (do not run a Sim at the same time).
func Bench(ctx context.Context, cfg BenchConfig) (BenchResult, error) {
	if err := cfg.fill(); err != nil {
		return BenchResult{}, err
	}
	topo := cfg.Topology
	pkts, _, innerLen := buildPackets(&cfg)
	res := BenchResult{Mode: cfg.Mode, PayloadSize: cfg.PayloadSize, InnerSize: innerLen, Flows: cfg.Flows}

	gen, err := openPacket(topo.GWLB, underlayLink, topo.Appliance, underlayLink)
	if err != nil {
		return res, err
	}
	defer gen.Close()
	sfd := gen.fd
	for i, p := range pkts {
		pkts[i] = gen.frame(p)
	}
	// The receiver: the GWLB port in the GWLB namespace, or the sink.
	rns, raddr := topo.GWLB, netip.AddrPortFrom(GWLBAddr, geneve.Port)
	if cfg.Mode == ModePlain {
		rns, raddr = topo.Sink, netip.AddrPortFrom(netip.IPv4Unspecified(), benchPort)
	}
	rfd := -1
	err = rns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		rfd = fd
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50000})
		return unix.Bind(fd, &unix.SockaddrInet4{Addr: raddr.Addr().As4(), Port: int(raddr.Port())})
	})
	if rfd >= 0 {
		defer unix.Close(rfd)
	}
	if err != nil {
		return res, fmt.Errorf("gwlbsim bench: receiver on %s in %s: %w", raddr, rns.Name, err)
	}

	// What a correct return looks like: the GENEVE header GWLB sent plus
	// the inner packet (tunnel), or the bare payload (plain).
	wantLen := uint32(cfg.PayloadSize)
	if cfg.Mode == ModeTunnel {
		wantLen = uint32(geneve.BaseLen + geneve.AWSOptionsLen + innerLen)
	}
	var received, badLen atomic.Uint64
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		pin(cfg.CPU)
		c0 := threadCPU()
		// The receiver polls: it drains the socket without blocking and
		// sleeps a millisecond when it is empty. Blocking receives would
		// have the kernel wake this thread for nearly every datagram: a
		// wakeup (and an IPI) paid on the appliance's CPU, where the
		// datagram is delivered, and a context switch against the sender
		// on the generator's CPU, which measured about a third of that
		// core at 400 kpps and limited the plain-forwarding baseline.
		v := newRecvVec(rxBatch, 9216)
		for !stop.Load() {
			n, err := mmsg(unix.SYS_RECVMMSG, rfd, v.hdrs, unix.MSG_DONTWAIT)
			if err != nil || n == 0 {
				time.Sleep(time.Millisecond)
				continue
			}
			good := 0
			for i := range v.hdrs[:n] {
				if v.hdrs[i].Len == wantLen {
					good++
				}
			}
			received.Add(uint64(good))
			badLen.Add(uint64(n - good))
		}
		res.ReceiverCPU = threadCPU() - c0
	}()
	defer func() {
		stop.Store(true)
		wg.Wait()
	}()

	sendVec := newSendVec(pkts, cfg.Batch)
	type stepReq struct {
		pps  float64
		done chan StepResult
	}
	reqs := make(chan stepReq)
	type sendStats struct{ cpu, sending time.Duration }
	sendDone := make(chan sendStats)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		pin(cfg.CPU)
		c0 := threadCPU()
		off := 0
		var sending time.Duration
		for req := range reqs {
			r0 := received.Load()
			start := time.Now()
			end := start.Add(cfg.Step)
			var sent uint64
			for {
				now := time.Now()
				if !now.Before(end) {
					break
				}
				if req.pps > 0 {
					due := start.Add(time.Duration(float64(sent) / req.pps * float64(time.Second)))
					if wait := due.Sub(now); wait > 0 {
						if wait > 200*time.Microsecond {
							time.Sleep(wait)
						}
						continue
					}
				}
				// Paced steps send about 50 µs worth of packets per
				// call: a full batch of jumbo packets at once would
				// measure the receiver's socket buffer, not its rate.
				b := cfg.Batch
				if req.pps > 0 {
					b = min(b, max(1, int(req.pps/20000)))
				}
				n, err := mmsg(unix.SYS_SENDMMSG, sfd, sendVec.hdrs[off:off+b], 0)
				if err == nil {
					sent += uint64(n)
				}
				off += b
				if off+cfg.Batch > len(sendVec.hdrs) {
					off = 0
				}
			}
			elapsed := time.Since(start)
			sending += elapsed
			el := elapsed.Seconds()
			time.Sleep(cfg.Drain)
			got := received.Load() - r0
			sr := StepResult{OfferedPPS: req.pps, SentPPS: float64(sent) / el, ReceivedPPS: float64(got) / el}
			if sent > 0 {
				sr.Loss = 1 - float64(got)/float64(sent)
				if sr.Loss < 0 {
					sr.Loss = 0
				}
			}
			req.done <- sr
		}
		sendDone <- sendStats{threadCPU() - c0, sending}
	}()
	run := func(pps float64) (StepResult, error) {
		done := make(chan StepResult, 1)
		select {
		case reqs <- stepReq{pps, done}:
		case <-ctx.Done():
			return StepResult{}, ctx.Err()
		}
		return <-done, nil
	}

	began := time.Now()
	var runErr error
	if len(cfg.Rates) > 0 {
		for i, rate := range cfg.Rates {
			var sr StepResult
			if sr, runErr = run(rate); runErr != nil {
				break
			}
			if i == 0 {
				res.FlatOut = sr
			}
			res.Steps = append(res.Steps, sr)
			if sr.Loss <= cfg.MaxLoss {
				res.BestPPS = max(res.BestPPS, sr.ReceivedPPS)
			}
		}
	} else if res.FlatOut, runErr = run(0); runErr == nil && res.FlatOut.Loss <= cfg.MaxLoss {
		// The appliance kept up with everything the generator offered.
		res.BestPPS = res.FlatOut.ReceivedPPS
	} else if runErr == nil {
		// Search between what certainly got through and what the
		// generator can offer.
		lo, hi := 0.0, res.FlatOut.SentPPS
		rate := res.FlatOut.ReceivedPPS
		if rate <= 0 {
			rate = hi / 10
		}
		for i := 0; i < cfg.Steps && hi-lo > hi*0.02; i++ {
			var sr StepResult
			if sr, runErr = run(rate); runErr != nil {
				break
			}
			res.Steps = append(res.Steps, sr)
			if sr.Loss <= cfg.MaxLoss {
				lo = rate
				res.BestPPS = max(res.BestPPS, sr.ReceivedPPS)
			} else {
				hi = rate
			}
			rate = (lo + hi) / 2
		}
	}
	close(reqs)
	ss := <-sendDone
	res.SenderCPU, res.Sending = ss.cpu, ss.sending
	res.Duration = time.Since(began)
	res.BestGbps = res.BestPPS * float64(innerLen) * 8 / 1e9
	stop.Store(true)
	wg.Wait()
	res.BadLength = badLen.Load()
	return res, runErr
}
