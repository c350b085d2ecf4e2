//go:build linux

package gwlbsim

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
)

// HealthCheck configures the simulator's HTTP health checks of its
// targets, as a GWLB target group's health check does: a target is
// healthy after HealthyThreshold consecutive 200 answers and unhealthy
// after UnhealthyThreshold consecutive failures (any other status, a
// timeout or a refused connection). New targets start unhealthy
// ("initial") and receive no new flows until they pass.
type HealthCheck struct {
	// Port is the HTTP port probed on every target's address.
	Port uint16
	// Path is the request path; empty: "/".
	Path string
	// Interval between probes of one target; zero: 10s (GWLB's default).
	Interval time.Duration
	// Timeout of one probe; zero: the smaller of Interval and 5s.
	Timeout time.Duration
	// HealthyThreshold and UnhealthyThreshold are the consecutive
	// successes and failures that change a target's state; zero: 5 and 2
	// (the target group defaults).
	HealthyThreshold, UnhealthyThreshold int
}

func (h HealthCheck) withDefaults() HealthCheck {
	if h.Path == "" {
		h.Path = "/"
	}
	if h.Interval <= 0 {
		h.Interval = 10 * time.Second
	}
	if h.Timeout <= 0 {
		h.Timeout = min(h.Interval, 5*time.Second)
	}
	if h.HealthyThreshold <= 0 {
		h.HealthyThreshold = 5
	}
	if h.UnhealthyThreshold <= 0 {
		h.UnhealthyThreshold = 2
	}
	return h
}

// TargetStats are one target's state and counters.
type TargetStats struct {
	Addr    netip.Addr
	Healthy bool
	// Since is when Healthy last changed (the simulator's start at first).
	Since time.Time
	// NewFlows is how many flows were placed on the target; Sent the
	// GENEVE packets sent to it; Returned the packets it sent back that
	// were delivered.
	NewFlows, Sent, Returned uint64
	// Checks and CheckFailures count health probes; LastCheck is the
	// last probe's outcome ("200", "503", or the error).
	Checks, CheckFailures uint64
	LastCheck             string
}

// target is one appliance behind the simulated GWLB.
type target struct {
	addr                          netip.Addr
	healthy                       atomic.Bool
	newFlows, sent, returned      atomic.Uint64
	checks, checkFailures         atomic.Uint64
	mu                            sync.Mutex
	since                         time.Time
	lastCheck                     string
	consecutiveOK, consecutiveBad int
}

func (t *target) stats() TargetStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return TargetStats{
		Addr: t.addr, Healthy: t.healthy.Load(), Since: t.since,
		NewFlows: t.newFlows.Load(), Sent: t.sent.Load(), Returned: t.returned.Load(),
		Checks: t.checks.Load(), CheckFailures: t.checkFailures.Load(), LastCheck: t.lastCheck,
	}
}

// record applies one probe's outcome to the target's state.
func (t *target) record(hc HealthCheck, ok bool, outcome string) (changed bool) {
	t.checks.Add(1)
	if !ok {
		t.checkFailures.Add(1)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lastCheck = outcome
	if ok {
		t.consecutiveOK++
		t.consecutiveBad = 0
		if !t.healthy.Load() && t.consecutiveOK >= hc.HealthyThreshold {
			t.healthy.Store(true)
			t.since = time.Now()
			return true
		}
		return false
	}
	t.consecutiveBad++
	t.consecutiveOK = 0
	if t.healthy.Load() && t.consecutiveBad >= hc.UnhealthyThreshold {
		t.healthy.Store(false)
		t.since = time.Now()
		return true
	}
	return false
}

// place chooses the target of a new flow: by the flow's hash over the
// healthy targets, as GWLB's 5-tuple stickiness does. With no healthy
// target it returns nil, unless failOpen (GWLB routes to all targets when
// none is healthy), which then hashes over all of them.
func place(targets []*target, k flow.Key, failOpen bool) *target {
	var healthy [8]*target
	hs := healthy[:0]
	for _, t := range targets {
		if t.healthy.Load() {
			hs = append(hs, t)
		}
	}
	if len(hs) == 0 {
		if !failOpen || len(targets) == 0 {
			return nil
		}
		hs = targets
	}
	return hs[k.Hash()%uint64(len(hs))]
}

// healthLoop probes t every interval until stop is closed.
func (s *Sim) healthLoop(t *target, hc HealthCheck, stop <-chan struct{}) {
	defer s.wg.Done()
	gw := s.topo.GWLB
	// Probes leave from the GWLB namespace, like data packets.
	client := gw.HTTPClient(hc.Timeout, &net.Dialer{LocalAddr: &net.TCPAddr{IP: GWLBAddr.AsSlice()}})
	defer client.CloseIdleConnections()
	url := "http://" + net.JoinHostPort(t.addr.String(), strconv.Itoa(int(hc.Port))) + hc.Path
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-stop
		cancel()
	}()
	tick := time.NewTicker(hc.Interval)
	defer tick.Stop()
	for {
		ok, outcome := probe(ctx, client, url)
		if ctx.Err() != nil {
			return
		}
		if t.record(hc, ok, outcome) {
			s.log.Info("gwlbsim: target health changed", "target", t.addr, "healthy", ok, "check", outcome)
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

func probe(ctx context.Context, c *http.Client, url string) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	req.Header.Set("User-Agent", "ELB-HealthChecker/2.0")
	resp, err := c.Do(req)
	if err != nil {
		return false, err.Error()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, strconv.Itoa(resp.StatusCode)
}

// Targets returns every target's state and counters, in the order of
// Config.Targets.
func (s *Sim) Targets() []TargetStats {
	out := make([]TargetStats, len(s.targets))
	for i, t := range s.targets {
		out[i] = t.stats()
	}
	return out
}

// Target returns the state and counters of the target at addr.
func (s *Sim) Target(addr netip.Addr) (TargetStats, error) {
	for _, t := range s.targets {
		if t.addr == addr {
			return t.stats(), nil
		}
	}
	return TargetStats{}, fmt.Errorf("gwlbsim: no target %s", addr)
}

func (s *Sim) targetAt(a netip.Addr) *target {
	for _, t := range s.targets {
		if t.addr == a {
			return t
		}
	}
	return nil
}
