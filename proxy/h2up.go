package proxy

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/internal/h1"
	"golang.org/x/net/http2"
)

// h2Pool wraps x/net's client connection pool of one upstream transport
// to find idle h2 connections that its idle timer forgot: x/net's timer
// does nothing when it fires while a request holds a stream reservation,
// and releasing a reservation that never became a stream does not re-arm
// it, so such a connection would stay open (and answer pings) forever.
// sweep closes them gracefully.
type h2Pool struct {
	inner http2.ClientConnPool
	mu    sync.Mutex
	conns map[*http2.ClientConn]struct{}
}

func (p *h2Pool) GetClientConn(req *http.Request, addr string) (*http2.ClientConn, error) {
	cc, err := p.inner.GetClientConn(req, addr)
	if cc != nil {
		p.mu.Lock()
		p.conns[cc] = struct{}{}
		p.mu.Unlock()
	}
	return cc, err
}

func (p *h2Pool) MarkDead(cc *http2.ClientConn) {
	p.inner.MarkDead(cc)
	p.mu.Lock()
	delete(p.conns, cc)
	p.mu.Unlock()
}

func idleFor(st http2.ClientConnState) time.Duration {
	if st.StreamsActive != 0 || st.StreamsReserved != 0 || st.StreamsPending != 0 || st.LastIdle.IsZero() {
		return -1
	}
	return time.Since(st.LastIdle)
}

// sweep forgets closed connections and shuts down those idle (no stream,
// reservation or pending request) for longer than idle. The wrapper hides
// x/net's own CloseIdleConnections, so closeIdle is sweep(0).
func (p *h2Pool) sweep(idle time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for cc := range p.conns {
		st := cc.State()
		switch {
		case st.Closed || st.Closing:
			delete(p.conns, cc)
		case idleFor(st) >= idle:
			delete(p.conns, cc)
			// Graceful: a request that reserved it meanwhile finishes
			// (or is retried on another connection).
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				cc.Shutdown(ctx)
			}()
		}
	}
}

// enableH2 lets tr speak h2 on connections whose ALPN chose it (x/net's
// client, with pings to find dead connections). tr's idle and response
// header timeouts, header limit and compression setting apply to it too.
// It returns the pool to sweep, nil if tr could not be configured.
func (u *upstream) enableH2(tr *http.Transport) *h2Pool {
	t2, err := http2.ConfigureTransports(tr)
	if err != nil { // only when tr already speaks h2: a programming error
		u.p.log.Error("proxy: upstream http2", "err", err)
		return nil
	}
	t2.ReadIdleTimeout = 30 * time.Second
	t2.PingTimeout = 15 * time.Second
	t2.MaxReadFrameSize = 1 << 20
	t2.CountError = func(errType string) { u.p.log.Debug("proxy: upstream http2 error", "type", errType) }
	pool := &h2Pool{inner: t2.ConnPool, conns: map[*http2.ClientConn]struct{}{}}
	t2.ConnPool = pool
	return pool
}

// sweepIdle closes, every upstream_idle_timeout, the h2 connections (see
// h2Pool.sweep) and fast-path HTTP/1.1 connections idle for longer than
// upstream_idle_timeout.
func (u *upstream) sweepIdle(ctx context.Context) {
	idle := u.p.cfg.UpstreamIdleTimeout
	if idle <= 0 {
		return
	}
	t := time.NewTicker(idle)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		u.mu.Lock()
		var h2s []*h2Pool
		var h1s []*h1.Pool
		for _, e := range u.m {
			pe := e.Value.(*poolEntry)
			if pe.h2 != nil {
				h2s = append(h2s, pe.h2)
			}
			if pe.h1 != nil {
				h1s = append(h1s, pe.h1)
			}
		}
		u.mu.Unlock()
		for _, hp := range h2s {
			hp.sweep(idle)
		}
		for _, hp := range h1s {
			hp.Sweep(idle)
		}
	}
}
