//go:build linux

package steer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Listener repair, the other half of self-repair (repair.go puts back the
// rules and routes that deliver to these listeners). A transparent
// listener can fail for good (accept returns a permanent error: the socket
// was shut down or reset from outside, a kernel resource went away). The
// TPROXY rules then find no listener and drop every intercepted SYN (fail
// closed), and nothing would bring it back but a restart. Each listener of
// the group ListenAll returns hides that from the proxy: on a permanent
// accept error it closes the broken socket and opens a new one on the same
// address with backoff, then resumes accepting; the proxy's serve loop
// never sees the failure. Temporary errors (EMFILE, timeouts) are passed
// through: the proxy backs off on those itself.
//
// Each re-open is counted (Listeners.Reopens,
// gwlbproxy_proxy_listener_reopens_total) and logged; Listeners.Health is
// red while a listener is down.

// Listeners are the transparent listeners the proxy serves, each
// self-healing.
type Listeners struct {
	HTTP []net.Listener // 127.0.0.1 and (with ipv6) ::1 on http_listen_port
	TLS  []net.Listener // same on tls_listen_port

	all     []*reopener
	reopens atomic.Uint64
	cancel  context.CancelFunc // ends re-open attempts' listen calls
}

// ListenAll opens the listeners the TPROXY rules deliver to, re-opened
// with ListenTransparent when one fails (until Close). Their re-open
// counter is registered with the registry New was given.
func (s *Steerer) ListenAll(ctx context.Context) (*Listeners, error) {
	var http, tls []net.Listener
	closeAll := func() {
		for _, ln := range http {
			ln.Close()
		}
		for _, ln := range tls {
			ln.Close()
		}
	}
	addrs := []string{"127.0.0.1"}
	if s.cfg.IPv6 {
		addrs = append(addrs, "::1")
	}
	for _, a := range addrs {
		for _, l := range []struct {
			port uint16
			dst  *[]net.Listener
		}{{s.cfg.HTTPListenPort, &http}, {s.cfg.TLSListenPort, &tls}} {
			ln, err := s.ListenTransparent(ctx, netip.AddrPortFrom(netip.MustParseAddr(a), l.port).String())
			if err != nil {
				closeAll()
				return nil, err
			}
			*l.dst = append(*l.dst, ln)
		}
	}
	// Re-opens outlive ctx (which may be only the start-up's) and end
	// with Close.
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ls, err := newListeners(http, tls, func(addr string) (net.Listener, error) {
		return s.ListenTransparent(rctx, addr)
	}, s.log, s.reg)
	if err != nil {
		cancel()
		closeAll()
		return nil, err
	}
	ls.cancel = cancel
	return ls, nil
}

// newListeners wraps ready listeners; open re-opens one by address. reg
// may be nil.
func newListeners(http, tls []net.Listener, open func(addr string) (net.Listener, error), log *slog.Logger, reg prometheus.Registerer) (*Listeners, error) {
	ls := &Listeners{}
	wrap := func(kind string, in []net.Listener) []net.Listener {
		var out []net.Listener
		for _, l := range in {
			addr := l.Addr()
			r := &reopener{
				kind: kind, addr: addr, log: log, count: &ls.reopens, cur: l, done: make(chan struct{}),
				open: func() (net.Listener, error) { return open(addr.String()) },
			}
			ls.all = append(ls.all, r)
			out = append(out, r)
		}
		return out
	}
	ls.HTTP, ls.TLS = wrap("http", http), wrap("tls", tls)
	if reg != nil {
		err := reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "gwlbproxy_proxy_listener_reopens_total",
			Help: "Transparent proxy listeners re-opened after accept failed for good.",
		}, func() float64 { return float64(ls.reopens.Load()) }))
		if err != nil {
			return nil, fmt.Errorf("listener metrics: %w", err)
		}
	}
	return ls, nil
}

// Health is nil while every listener serves.
func (ls *Listeners) Health() error {
	var errs []error
	for _, r := range ls.all {
		errs = append(errs, r.health())
	}
	return errors.Join(errs...)
}

// Reopens counts listeners re-opened since start.
func (ls *Listeners) Reopens() uint64 { return ls.reopens.Load() }

// Close closes every listener and stops re-opening.
func (ls *Listeners) Close() error {
	if ls.cancel != nil {
		ls.cancel()
	}
	var errs []error
	for _, r := range ls.all {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}

// reopener is one self-healing transparent listener.
type reopener struct {
	kind  string
	addr  net.Addr
	open  func() (net.Listener, error)
	log   *slog.Logger
	count *atomic.Uint64 // shared re-open counter of the group

	mu     sync.Mutex
	cur    net.Listener // nil while re-opening
	down   error        // why it is down; nil while serving
	since  time.Time
	closed bool
	done   chan struct{}
}

// Backoff between re-open attempts.
const (
	reopenFirst = 50 * time.Millisecond
	reopenMax   = 5 * time.Second
)

func (r *reopener) Addr() net.Addr { return r.addr }

// Close closes the current socket and stops re-opening.
func (r *reopener) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	close(r.done)
	if r.cur != nil {
		return r.cur.Close()
	}
	return nil
}

// Accept returns the next connection, re-opening the socket in between if
// it failed; net.ErrClosed after Close.
func (r *reopener) Accept() (net.Conn, error) {
	for {
		r.mu.Lock()
		l, closed := r.cur, r.closed
		r.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		if l == nil {
			if !r.reopen() {
				return nil, net.ErrClosed
			}
			continue
		}
		c, err := l.Accept()
		if err == nil {
			return c, nil
		}
		if temporary(err) {
			return nil, err
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return nil, net.ErrClosed
		}
		l.Close()
		r.cur, r.down, r.since = nil, err, time.Now()
		r.mu.Unlock()
		r.log.Error("proxy listener failed; re-opening it", "kind", r.kind, "addr", r.addr.String(), "err", err)
	}
}

// reopen opens a new socket with backoff until it succeeds (true) or the
// listener is closed (false).
func (r *reopener) reopen() bool {
	delay := reopenFirst
	var lastErr string
	for attempt := 1; ; attempt++ {
		l, err := r.open()
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			if err == nil {
				l.Close()
			}
			return false
		}
		if err == nil {
			down := time.Since(r.since)
			r.cur, r.down = l, nil
			r.mu.Unlock()
			r.count.Add(1)
			r.log.Info("proxy listener re-opened", "kind", r.kind, "addr", r.addr.String(), "attempts", attempt, "down", down.Round(time.Millisecond))
			return true
		}
		r.down = fmt.Errorf("re-opening: %w", err)
		r.mu.Unlock()
		if err.Error() != lastErr { // once per distinct error, not per attempt
			lastErr = err.Error()
			r.log.Warn("proxy listener re-open failed; retrying", "kind", r.kind, "addr", r.addr.String(), "attempt", attempt, "err", err)
		}
		select {
		case <-r.done:
			return false
		case <-time.After(delay):
		}
		delay = min(2*delay, reopenMax)
	}
}

// health is nil while the listener serves.
func (r *reopener) health() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down == nil || r.closed {
		return nil
	}
	return fmt.Errorf("proxy: %s listener %s down for %s: %v", r.kind, r.addr, time.Since(r.since).Round(time.Millisecond), r.down)
}

func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}
