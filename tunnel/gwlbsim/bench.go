//go:build linux

package gwlbsim

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
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
	// Batch is the sendmmsg batch size.
	Batch int
	// CPU pins the sending thread to one CPU; -1 leaves
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
	// SenderCPU is the sending thread's CPU time over the whole run;
	// compare with Sending to see whether the generator, not the
	// appliance, was the limit. (Returns are counted by the kernel at the
	// receiving link's ingress hook: that cost is softirq time on whichever
	// CPU receives them, not a thread's.)
	SenderCPU time.Duration `json:"sender_cpu_ns"`
	Duration  time.Duration `json:"duration_ns"`
	// Sending is the wall time spent sending (the steps without their
	// drains): the sender's CPU share is SenderCPU / Sending, as Duration
	// would understate it by the idle drains.
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

// mmsgs is a prepared sendmmsg vector.
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

func mmsg(trap uintptr, fd int, v []unix.Mmsghdr, flags int) (int, error) {
	n, _, e := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&v[0])), uintptr(len(v)), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

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
	// What a correct return looks like: the GENEVE header GWLB sent plus
	// the inner packet (tunnel), or the bare payload (plain), in UDP in
	// IPv4. Returns are counted where they arrive: the GWLB namespace's
	// underlay link, or the sink's.
	wantLen := cfg.PayloadSize
	rns, rdev, rport := topo.Sink, "s0", uint16(benchPort)
	if cfg.Mode == ModeTunnel {
		wantLen = geneve.BaseLen + geneve.AWSOptionsLen + innerLen
		rns, rdev, rport = topo.GWLB, underlayLink, geneve.Port
	}
	ctr, err := newReturnCounter(rns, rdev, rport, uint16(outerLen+wantLen))
	if err != nil {
		return res, err
	}
	defer ctr.Close()
	var countErr error
	received := func() uint64 {
		good, _, err := ctr.read()
		if err != nil && countErr == nil {
			countErr = err
		}
		return good
	}

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
			r0 := received()
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
				// measure a queue's length, not a rate.
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
			got := received() - r0
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
	if _, bad, err := ctr.read(); err == nil {
		res.BadLength = bad
	}
	if runErr == nil {
		runErr = countErr
	}
	return res, runErr
}
