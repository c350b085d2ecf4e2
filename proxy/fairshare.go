package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Fair share: no client can hold a connection slot without making
// progress (progress_timeout), nor take more than its share of the slots
// (max_conns_per_client), and max_conns fits the instance's memory.

// What stalled on a connection (connState.stall, record field "stalled").
const (
	stallNone       = iota
	stallClientSend // the client stopped sending its request body
	stallClientRead // the client stopped reading the response
	stallUpRead     // a spliced upstream stopped reading what the client sent
)

func stallName(s uint32) string {
	switch s {
	case stallClientSend:
		return "client_send"
	case stallClientRead:
		return "client_read"
	case stallUpRead:
		return "upstream_read"
	}
	return ""
}

// setStall remembers the first stall of the connection.
func (st *connState) setStall(s uint32) { st.stall.CompareAndSwap(stallNone, s) }

// markStalled fills the stall fields of a request or connection record.
func (st *connState) markStalled(rec *Record, d time.Duration) {
	markStalled(rec, st.stall.Load(), d)
}

func markStalled(rec *Record, s uint32, d time.Duration) {
	if s == stallNone {
		return
	}
	rec.Stalled = stallName(s)
	rec.Action = "error"
	switch s {
	case stallClientSend:
		rec.UpstreamError = "client sent no request body byte for " + d.String()
	case stallClientRead:
		rec.UpstreamError = "client read no response byte for " + d.String()
	case stallUpRead:
		rec.UpstreamError = "upstream read nothing for " + d.String()
	}
}

// isTimeout says whether err is a deadline error.
func isTimeoutErr(err error) bool {
	ne, ok := err.(interface{ Timeout() bool })
	if ok && ne.Timeout() {
		return true
	}
	return err != nil && (os.IsTimeout(err) || strings.Contains(err.Error(), "deadline exceeded"))
}

// HTTP/1 connections keep their progress deadlines in the engine
// (h1.Server.ProgressTimeout), which tells the connection state of a stall
// (connState.Stall in h1.go).

// streamDeadlines is what x/net/http2's ResponseWriter offers per stream.
type streamDeadlines interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// aLongTimeAgo is a deadline in the past: it wakes a blocked read or write.
var aLongTimeAgo = time.Unix(1, 0)

// streamWatch enforces progress_timeout on one HTTP/2 stream. x/net's
// per-stream deadlines are timers that end the stream when they pass
// whether or not anything is blocked (an SSE stream quiet for a minute
// would die), so the watch marks when a body read or a response write
// starts blocking and, when one has blocked for progress_timeout, ends
// the stream with a deadline in the past and records the stalled side.
// One timer per stream, armed at the stream's first read or write.
type streamWatch struct {
	dl               streamDeadlines
	ri               *reqInfo
	d                time.Duration
	reading, writing atomic.Int64 // start of a blocked read/write (unix ns), 0: none
	mu               sync.Mutex
	t                *time.Timer
	stopped          bool
}

// begin marks an operation as started and arms the timer.
func (sw *streamWatch) begin(op *atomic.Int64) {
	op.Store(time.Now().UnixNano())
	sw.mu.Lock()
	if sw.t == nil && !sw.stopped {
		sw.t = time.AfterFunc(sw.d, sw.check)
	}
	sw.mu.Unlock()
}

func (sw *streamWatch) check() {
	now := time.Now().UnixNano()
	next := sw.d
	for _, x := range []struct {
		op    *atomic.Int64
		stall uint32
		end   func(time.Time) error
	}{{&sw.reading, stallClientSend, sw.dl.SetReadDeadline}, {&sw.writing, stallClientRead, sw.dl.SetWriteDeadline}} {
		start := x.op.Load()
		if start == 0 {
			continue
		}
		if el := time.Duration(now - start); el >= sw.d {
			sw.ri.stall.CompareAndSwap(stallNone, x.stall)
			x.end(aLongTimeAgo)
		} else {
			next = min(next, sw.d-el)
		}
	}
	sw.mu.Lock()
	if !sw.stopped {
		sw.t.Reset(next)
	}
	sw.mu.Unlock()
}

func (sw *streamWatch) stop() {
	sw.mu.Lock()
	sw.stopped = true
	if sw.t != nil {
		sw.t.Stop()
	}
	sw.mu.Unlock()
}

// progressBody is an HTTP/2 request body under a streamWatch.
type progressBody struct {
	rc io.ReadCloser
	sw *streamWatch
}

func (b *progressBody) Read(p []byte) (int, error) {
	b.sw.begin(&b.sw.reading)
	n, err := b.rc.Read(p)
	b.sw.reading.Store(0)
	return n, err
}

func (b *progressBody) Close() error { return b.rc.Close() }

// clientKey is one client: its address within the GWLB endpoint (VPC) it
// came through. VPCs behind one GWLB overlap, so the same address behind
// two endpoints is two clients; ep is 0 when the endpoint is unknown.
type clientKey struct {
	ep   uint64
	addr netip.Addr
}

// clientCounts counts open connections per client.
type clientCounts struct {
	limit int
	mu    sync.Mutex
	n     map[clientKey]int32
}

func newClientCounts(limit int) *clientCounts {
	return &clientCounts{limit: limit, n: map[clientKey]int32{}}
}

// acquire takes a slot for a; false when a is at its limit.
func (cc *clientCounts) acquire(a clientKey) bool {
	if !a.addr.IsValid() {
		return true
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if int(cc.n[a]) >= cc.limit {
		return false
	}
	cc.n[a]++
	return true
}

func (cc *clientCounts) release(a clientKey) {
	if !a.addr.IsValid() {
		return
	}
	cc.mu.Lock()
	if cc.n[a] <= 1 {
		delete(cc.n, a)
	} else {
		cc.n[a]--
	}
	cc.mu.Unlock()
}

// top returns the number of clients with connections and the largest
// count.
func (cc *clientCounts) top() (clients int, most int) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for _, v := range cc.n {
		most = max(most, int(v))
	}
	return len(cc.n), most
}

func remoteAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// refusalLog lets through at most refusalBurst records of refused
// connections, refilled at refusalRate per second; the others are only
// counted (and the next record says how many were left out).
type refusalLog struct {
	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed uint64 // since the last record
	total      atomic.Uint64
}

const (
	refusalRate  = 10
	refusalBurst = 20
	// maxRefusers bounds the goroutines saying goodbye to refused
	// connections; beyond it a refused connection is just closed.
	maxRefusers = 64
	// refuseLinger is how long a refused connection is drained after its
	// answer, so closing it does not reset the answer away.
	refuseLinger = time.Second
)

// allow reports whether a record may be written now and how many were
// left out before it.
func (l *refusalLog) allow(now time.Time) (bool, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last.IsZero() {
		l.tokens = refusalBurst
	} else {
		l.tokens = min(refusalBurst, l.tokens+now.Sub(l.last).Seconds()*refusalRate)
	}
	l.last = now
	if l.tokens < 1 {
		l.suppressed++
		l.total.Add(1)
		return false, 0
	}
	l.tokens--
	n := l.suppressed
	l.suppressed = 0
	return true, n
}

// Why a connection was refused before it was served.
const (
	refusedTotal     = "limit:max_conns"
	refusedPerClient = "limit:max_conns_per_client"
)

// refuse ends a connection over a limit: counted, recorded (rate
// limited), a 503 answer on plain HTTP or a clean close (FIN, not RST)
// on TLS, from a bounded set of goroutines so the accept loop never
// waits on a client.
func (p *Proxy) refuse(c net.Conn, isTLS bool, ep connEndpoint, rule string) {
	var why string
	if rule == refusedTotal {
		p.m.limited.Inc()
		p.stats.limited.Add(1)
		why = "connection limit reached"
	} else {
		p.m.clientLimited.Inc()
		p.stats.clientLimited.Add(1)
		why = "per-client connection limit reached (" + strconv.Itoa(p.clients.limit) + ")"
	}
	if ok, left := p.refusals.allow(time.Now()); ok {
		st := p.newState(c, isTLS, ep)
		st.rec.Action, st.rec.Rule, st.rec.UpstreamError = "error", rule, why
		if !isTLS {
			st.rec.Status = http.StatusServiceUnavailable
		}
		if left > 0 {
			st.rec.UpstreamError += fmt.Sprintf("; %d more refusals not recorded", left)
		}
		p.ship(&st.rec, st.start)
	}
	select {
	case p.refusers <- struct{}{}:
		go func() {
			defer func() { <-p.refusers }()
			goodbye(c, isTLS, why)
		}()
	default:
		c.Close()
	}
}

// goodbye answers a refused connection and closes it cleanly.
func goodbye(c net.Conn, isTLS bool, why string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(refuseLinger))
	if !isTLS {
		body := "503 Service Unavailable: " + why + "\n"
		bw := bufio.NewWriterSize(c, 512)
		fmt.Fprintf(bw, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s", len(body), body)
		if bw.Flush() != nil {
			return
		}
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.CopyN(io.Discard, c, 64<<10)
}

// InstanceMemory is the memory this process may use: its cgroup's
// memory.max when set (systemd MemoryMax=, a container limit), else
// MemTotal; 0 when unknown. New sizes max_conns from it.
func InstanceMemory() uint64 {
	var total uint64
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				total = kb << 10
			}
		}
	}
	// cgroup v2: "0::/system.slice/gwlbproxy.service" names the group.
	files := []string{"/sys/fs/cgroup/memory.max"}
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "0::"); ok && rest != "/" && !strings.Contains(rest, "..") {
				files = append(files, "/sys/fs/cgroup"+rest+"/memory.max")
			}
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 && (total == 0 || v < total) {
			total = v // "max" (no limit) does not parse
		}
	}
	return total
}

// quietTrim: after a burst of work, once the proxy has been quiet (no
// connection accepted, no request) for quiet, the garbage the burst left
// is collected and the freed memory returned to the kernel, at most once
// per burst, at most once per minGap, and only when at least minAlloc
// bytes were allocated since the last trim (a trickle of requests does
// not buy a full collection every few seconds). The appliance runs the
// collector lazily (runtime gc_percent 400) for throughput; without this,
// thousands of connections opened in a burst and then idle kept several
// times their live heap resident until the runtime's two-minute forced
// collection. A proxy that keeps serving never trims: gc_percent governs
// it.
type trimPolicy struct {
	quiet, minGap time.Duration
	minAlloc      uint64
}

var defaultTrim = trimPolicy{quiet: 2 * time.Second, minGap: 30 * time.Second, minAlloc: 32 << 20}

func (p *Proxy) trimWhenQuiet(ctx context.Context, pol trimPolicy, trim func()) {
	t := time.NewTicker(pol.quiet / 2)
	defer t.Stop()
	sample := []rtmetrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	allocated := func() uint64 {
		rtmetrics.Read(sample)
		if sample[0].Value.Kind() != rtmetrics.KindUint64 {
			return 0
		}
		return sample[0].Value.Uint64()
	}
	var last uint64
	var quietSince, lastTrim time.Time
	allocAtTrim := allocated()
	trimmed := true
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			act := p.stats.accepted.Load() + p.stats.requests.Load()
			if act != last {
				last, quietSince, trimmed = act, now, false
				continue
			}
			if trimmed || now.Sub(quietSince) < pol.quiet || !lastTrim.IsZero() && now.Sub(lastTrim) < pol.minGap {
				continue
			}
			trimmed = true
			if a := allocated(); a-allocAtTrim >= pol.minAlloc {
				trim()
				lastTrim, allocAtTrim = time.Now(), allocated()
			}
		}
	}
}
