package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/internal/h1"
	"github.com/gwlbproxy/gwlbproxy/proxy/mirror"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

type stateKey struct{}

// stateFrom returns the connection state a request's context carries.
func stateFrom(ctx context.Context) *connState {
	st, _ := ctx.Value(stateKey{}).(*connState)
	return st
}

// connState is everything known about one client connection. Requests read
// it; only the front end writes it before handing the conn to net/http.
type connState struct {
	p        *Proxy
	start    time.Time
	client   net.Conn // raw accepted conn, for forced close
	clientAP netip.AddrPort
	dst      netip.AddrPort
	// dstHostPort is dst.String(), the upstream URL authority of every
	// request (computed once per connection).
	dstHostPort string
	endpoint    uint64
	hasEP       bool
	isTLS       bool
	sni         string // normalized SNI ("" when absent)
	// bind is the last destination-binding outcome on this connection
	// (the destination is fixed, so it holds for its name).
	bind atomic.Pointer[bindResult]
	// fixed, when set, answers every request on this connection (deny or
	// upstream error page) and nothing is forwarded.
	fixed *fixedReply
	// rec is the connection-level record template; requests copy it.
	rec      Record
	requests atomic.Int64
	// cur is the request being served on an HTTP/1 connection (nil
	// between requests, unused for HTTP/2). Only the connection's serving
	// goroutine touches it: HTTP/1 requests are sequential.
	cur *reqInfo
	// h1 is the connection's HTTP/1.x server while it runs (Shutdown
	// wakes it when it waits for a request).
	h1 atomic.Pointer[h1.Conn]

	preMu  sync.Mutex
	pre    net.Conn // upstream TLS conn verified before minting, unused yet
	preKey poolKey

	// Per-client mode only (Deps.UpstreamPerClient): this connection's
	// own upstream transport and its one live upstream connection, both
	// closed by finish.
	upMu   sync.Mutex
	upTr   *http.Transport
	upH1   *h1.Pool // the fast path over the same one connection
	up     net.Conn
	upDone bool

	finishOnce sync.Once
	released   atomic.Bool
	// stall is what made no progress for progress_timeout (stall*).
	stall atomic.Uint32
}

// fixedReply is a canned answer for every request on a connection.
type fixedReply struct {
	status int
	action string
	rule   string
	upErr  string
	title  string
	detail string
}

// connEndpoint is the GWLB endpoint a connection came through, asked once
// per connection (Deps.EndpointOf costs a conntrack query).
type connEndpoint struct {
	id uint64
	ok bool
}

func (p *Proxy) endpointOf(c net.Conn) connEndpoint {
	if p.deps.EndpointOf == nil {
		return connEndpoint{}
	}
	id, ok := p.deps.EndpointOf(c)
	return connEndpoint{id, ok}
}

func (p *Proxy) newState(c net.Conn, isTLS bool, ep connEndpoint) *connState {
	st := &connState{p: p, start: time.Now(), client: c, isTLS: isTLS}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		st.clientAP = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if dst, err := p.deps.OriginalDst(c); err == nil {
		st.dst = dst
	}
	st.dstHostPort = st.dst.String()
	st.endpoint, st.hasEP = ep.id, ep.ok
	r := &st.rec
	r.InstanceID = p.deps.InstanceID
	r.PolicyVersion = p.ps().version
	if st.hasEP {
		r.EndpointID = policy.FormatEndpointID(st.endpoint)
	}
	if st.clientAP.IsValid() {
		r.ClientIP = st.clientAP.Addr().String()
		r.ClientPort = st.clientAP.Port()
	}
	if st.dst.IsValid() {
		r.DstIP = st.dst.Addr().String()
		r.DstPort = st.dst.Port()
	}
	r.Scheme = "http"
	if isTLS {
		r.Scheme = "https"
	}
	return st
}

func (st *connState) input(name string) policy.Input {
	return policy.Input{Endpoint: st.endpoint, HasEndpoint: st.hasEP, Client: st.clientAP.Addr(), Dst: st.dst, Name: name}
}

// takePre hands the pre-verified upstream conn to the first dial for key;
// an HTTP/1.1-only dialer (h2 false) leaves a conn that negotiated h2.
func (st *connState) takePre(key poolKey, h2 bool) net.Conn {
	st.preMu.Lock()
	defer st.preMu.Unlock()
	if st.pre != nil && st.preKey == key && (h2 || !isH2(st.pre)) {
		c := st.pre
		st.pre = nil
		return c
	}
	return nil
}

// ownTransport returns (creating on first use) the connection's own
// upstream transport in per-client mode.
func (st *connState) ownTransport(u *upstream, key poolKey) *http.Transport {
	st.upMu.Lock()
	defer st.upMu.Unlock()
	if st.upTr == nil {
		st.upTr = u.perClientTransport(st, key)
	}
	return st.upTr
}

// ownH1 returns (creating on first use) the connection's own fast-path
// pool in per-client mode: at most one idle connection, never timed out
// by the pool (see perClientTransport), closed by finish.
func (st *connState) ownH1(u *upstream, key poolKey) *h1.Pool {
	st.upMu.Lock()
	defer st.upMu.Unlock()
	if st.upH1 == nil {
		lim := u.h1Limits()
		lim.IdleTimeout = 0
		st.upH1 = h1.NewPool(1, lim)
		if st.upDone {
			st.upH1.Close()
		}
	}
	return st.upH1
}

var errClientGone = errors.New("client connection closed")

// adopt makes c the connection's live upstream (per-client mode). The
// transport allows one connection, so a new dial means the previous one
// is gone; it is closed again to be sure. After finish, c is refused.
func (st *connState) adopt(c net.Conn) (net.Conn, error) {
	st.upMu.Lock()
	defer st.upMu.Unlock()
	if st.upDone {
		c.Close()
		return nil, errClientGone
	}
	if st.up != nil {
		st.up.Close()
	}
	st.up = c
	return c, nil
}

// closeUpstream closes the per-client upstream connection and transport.
func (st *connState) closeUpstream() {
	st.upMu.Lock()
	st.upDone = true
	up, tr, hp := st.up, st.upTr, st.upH1
	st.up = nil
	st.upMu.Unlock()
	if up != nil {
		up.Close()
	}
	if hp != nil {
		hp.Close()
	}
	if tr != nil {
		tr.CloseIdleConnections()
	}
}

// finish runs once when the client connection is gone: it closes an unused
// pre-dialed upstream and (per-client mode) the connection's own upstream,
// records connections that carried no request, and releases the
// connection slot.
func (st *connState) finish() {
	st.finishOnce.Do(func() {
		st.preMu.Lock()
		if st.pre != nil {
			st.pre.Close()
			st.pre = nil
		}
		st.preMu.Unlock()
		st.closeUpstream()
		if st.requests.Load() == 0 {
			st.markStalled(&st.rec, st.p.cfg.ProgressTimeout)
			if st.rec.Action == "" {
				st.rec.Action = "error"
				st.rec.UpstreamError = "client sent no complete request"
			}
			st.p.ship(&st.rec, st.start)
		}
		st.release()
	})
}

func (st *connState) release() {
	if st.released.CompareAndSwap(false, true) {
		p := st.p
		p.mu.Lock()
		delete(p.active, st)
		p.mu.Unlock()
		p.m.active.Dec()
		p.clients.release(clientKey{st.endpoint, st.clientAP.Addr()})
		if s := st.stall.Load(); s != stallNone {
			p.stats.stalled.Add(1)
			p.m.stalled.WithLabelValues(stallName(s)).Inc()
		}
		<-p.sem
		p.conns.Done()
	}
}

func isH2(c net.Conn) bool {
	tc, ok := c.(*tls.Conn)
	return ok && tc.ConnectionState().NegotiatedProtocol == "h2"
}

func tlsVersionName(v uint16) string {
	switch v {
	case 0:
		return ""
	case tls.VersionTLS10:
		return "TLSv1.0"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return tls.VersionName(v)
}

// servedConn is a client conn being served (HTTP/1.x or HTTP/2), carrying its state.
type servedConn struct {
	net.Conn
	st *connState
	// mir mirrors the cleartext both ways (nil: mirror off or HTTP/2).
	mir *mirror.Stream
}

// served wraps a client conn about to be served as HTTP/1.x, starting its
// mirrored stream when the decryption mirror is on.
func (p *Proxy) served(c net.Conn, st *connState) *servedConn {
	sc := &servedConn{Conn: c, st: st}
	if p.deps.Mirror != nil {
		sc.mir = p.deps.Mirror.Start(st.clientAP, st.dst)
	}
	return sc
}

// countUnmirroredH2 counts a bumped HTTP/2 connection the mirror skips.
func (p *Proxy) countUnmirroredH2() {
	if p.deps.Mirror != nil {
		p.m.mirrorH2.Inc()
	}
}

// Read mirrors what the client sent.
func (c *servedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.mir != nil {
		c.mir.Client(b[:n])
		if err != nil && abnormal(err) {
			c.mir.Abort()
		}
	}
	return n, err
}

// Write mirrors what the client was sent, and notes a write that timed
// out: the client stopped reading (the only write deadlines on a served
// conn are progress deadlines).
func (c *servedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil && isTimeoutErr(err) {
		c.st.setStall(stallClientRead)
	}
	if c.mir != nil {
		c.mir.Server(b[:n])
		if err != nil {
			c.mir.Abort()
		}
	}
	return n, err
}

// abnormal: a read error that is not an orderly end (EOF, our own close,
// an idle or shutdown deadline), so the mirrored stream ends with RST.
func abnormal(err error) bool {
	var ne net.Error
	return !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !(errors.As(err, &ne) && ne.Timeout())
}

// CloseWrite half-closes the client connection (TLS: close_notify), when
// it can. Writes after it are not mirrored (there are none).
func (c *servedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c *servedConn) Close() error {
	err := c.Conn.Close()
	c.mir.Close()
	c.st.finish()
	return err
}
