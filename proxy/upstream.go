package proxy

import (
	"container/list"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"github.com/elazarl/goproxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/internal/h1"
)

// poolKey identifies an upstream connection pool: the original destination
// and the TLS server name. Keying by Host (as http.Transport does) would let
// requests meant for different original destinations share a connection.
type poolKey struct {
	dst netip.AddrPort
	sni string
	tls bool
}

// poolEntry is one destination's transports: tr speaks h2 when the
// upstream offers it (HTTP2 on, shared mode), tr1 is HTTP/1.1 only, for
// requests that need it (Upgrade: WebSocket). Without h2 they are the
// same, and h1 is the fast path for bodyless GET and HEAD.
type poolEntry struct {
	key        poolKey
	tr, tr1    *http.Transport
	h2         *h2Pool  // tr's h2 connections; nil without h2
	h1         *h1.Pool // nil with h2
	verifiedAt time.Time
}

func (pe *poolEntry) closeIdle() {
	pe.tr.CloseIdleConnections()
	if pe.tr1 != pe.tr {
		pe.tr1.CloseIdleConnections()
	}
	if pe.h2 != nil {
		pe.h2.sweep(0)
	}
	if pe.h1 != nil {
		pe.h1.Close()
	}
}

// upstream owns one http.Transport per poolKey (LRU-bounded), each dialing
// exactly its key's destination, and turns upstream failures into pages.
type upstream struct {
	p   *Proxy
	mu  sync.Mutex
	m   map[poolKey]*list.Element
	lru *list.List
}

func newUpstream(p *Proxy) *upstream {
	return &upstream{p: p, m: map[poolKey]*list.Element{}, lru: list.New()}
}

func (u *upstream) size() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.m)
}

// forgetVerified closes idle pooled connections and forgets past
// verifications, after the upstream roots changed (a reload).
func (u *upstream) forgetVerified() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, e := range u.m {
		pe := e.Value.(*poolEntry)
		pe.verifiedAt = time.Time{}
		pe.closeIdle()
	}
}

func (u *upstream) closeIdle() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, e := range u.m {
		e.Value.(*poolEntry).closeIdle()
	}
}

// h2 says whether upstream TLS connections offer h2: http2 is on and
// connections are shared (per-client mode stays HTTP/1.1: one request at a
// time per client connection gains nothing from streams, and an h2 client
// could redial the client's 5-tuple on GOAWAY).
func (u *upstream) h2() bool { return u.p.cfg.HTTP2 && !u.p.deps.UpstreamPerClient }

// transport returns the RoundTripper for st's request req: in shared mode
// the pool for key (its HTTP/1.1 transport for upgrade requests), in
// per-client mode st's own transport.
func (u *upstream) transport(st *connState, key poolKey, req *http.Request) *http.Transport {
	if u.p.deps.UpstreamPerClient {
		return st.ownTransport(u, key)
	}
	pe := u.entry(key)
	if req.Header.Get("Upgrade") != "" {
		return pe.tr1
	}
	return pe.tr
}

func (u *upstream) entry(key poolKey) *poolEntry {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e, ok := u.m[key]; ok {
		u.lru.MoveToFront(e)
		return e.Value.(*poolEntry)
	}
	cfg := &u.p.cfg
	pe := &poolEntry{key: key}
	mk := func(h2 bool) *http.Transport {
		tr := u.newTransport(
			func(ctx context.Context) (net.Conn, error) {
				return u.dial(ctx, clientOf(stateFrom(ctx)), key)
			},
			func(ctx context.Context) (net.Conn, error) {
				st := stateFrom(ctx)
				if st != nil {
					if c := st.takePre(key, h2); c != nil {
						return c, nil
					}
				}
				return u.dialTLS(ctx, st, key, h2)
			})
		tr.MaxIdleConnsPerHost = cfg.UpstreamIdlePerDest
		tr.MaxIdleConns = cfg.UpstreamIdlePerDest
		if cfg.UpstreamIdlePerDest == 0 {
			tr.MaxIdleConnsPerHost = -1 // 0 would mean http.DefaultMaxIdleConnsPerHost
		}
		if h2 && key.tls {
			pe.h2 = u.enableH2(tr)
		}
		return tr
	}
	pe.tr = mk(u.h2())
	pe.tr1 = pe.tr
	if u.h2() && key.tls {
		pe.tr1 = mk(false)
	} else {
		pe.h1 = h1.NewPool(cfg.UpstreamIdlePerDest, u.h1Limits())
	}
	u.m[key] = u.lru.PushFront(pe)
	for len(u.m) > cfg.UpstreamPools {
		old := u.lru.Back()
		oe := old.Value.(*poolEntry)
		u.lru.Remove(old)
		delete(u.m, oe.key)
		oe.closeIdle()
	}
	return pe
}

// h1Limits are the fast path's limits from the configuration.
func (u *upstream) h1Limits() h1.Limits {
	cfg := &u.p.cfg
	return h1.Limits{
		IdleTimeout:   cfg.UpstreamIdleTimeout,
		HeaderTimeout: cfg.ResponseHeaderTimeout,
		MaxHeader:     int64(cfg.MaxHeaderBytes) * 4,
	}
}

// newTransport builds a transport whose every dial goes to one destination
// through dial (plain) or dialTLS (verified TLS). It speaks HTTP/1.1 unless
// enableH2 is applied.
func (u *upstream) newTransport(dial, dialTLS func(context.Context) (net.Conn, error)) *http.Transport {
	cfg := &u.p.cfg
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx)
		},
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialTLS(ctx)
		},
		IdleConnTimeout:        cfg.UpstreamIdleTimeout,
		ResponseHeaderTimeout:  cfg.ResponseHeaderTimeout,
		TLSHandshakeTimeout:    cfg.UpstreamTLSTimeout,
		DisableCompression:     true,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: int64(cfg.MaxHeaderBytes) * 4,
		ForceAttemptHTTP2:      false,
		// No h2 unless enableH2 adds it.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
}

// perClientTransport is the transport of one client connection in
// per-client mode: at most one upstream connection, dialed with the
// client's own address, owned by st (closed by st.finish). Requests of
// that client wait for the connection instead of dialing a second one,
// which the kernel would refuse (same 5-tuple) or GWLB would not know.
func (u *upstream) perClientTransport(st *connState, key poolKey) *http.Transport {
	tr := u.newTransport(
		func(ctx context.Context) (net.Conn, error) {
			c, err := u.dial(ctx, st.client, key)
			if err != nil {
				return nil, err
			}
			return st.adopt(c)
		},
		func(ctx context.Context) (net.Conn, error) {
			c := st.takePre(key, false)
			if c == nil {
				var err error
				if c, err = u.dialTLS(ctx, st, key, false); err != nil {
					return nil, err
				}
			}
			return st.adopt(c)
		})
	tr.MaxConnsPerHost = 1
	tr.MaxIdleConnsPerHost = 1
	tr.MaxIdleConns = 1
	// No idle timeout of our own: closing first would leave our side in
	// TIME_WAIT and the client's next request could not redial the same
	// 5-tuple. The connection lives as long as the client connection
	// (whose idle timeout applies) or until the server closes it.
	tr.IdleConnTimeout = 0
	return tr
}

func clientOf(st *connState) net.Conn {
	if st == nil {
		return nil
	}
	return st.client
}

func (u *upstream) recentlyVerified(key poolKey) bool {
	ttl := u.p.cfg.VerifiedTTL
	if ttl <= 0 {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if e, ok := u.m[key]; ok {
		return time.Since(e.Value.(*poolEntry).verifiedAt) < ttl
	}
	return false
}

func (u *upstream) markVerified(key poolKey) {
	u.mu.Lock()
	if e, ok := u.m[key]; ok {
		e.Value.(*poolEntry).verifiedAt = time.Now()
	}
	u.mu.Unlock()
}

// dial opens TCP to the key's destination after the SSRF guard, on behalf
// of client (nil when unknown; never nil in per-client mode).
func (u *upstream) dial(ctx context.Context, client net.Conn, key poolKey) (net.Conn, error) {
	if why := u.p.ps().guard.Check(key.dst.Addr()); why != "" {
		return nil, &ssrfError{why}
	}
	ctx, cancel := context.WithTimeout(ctx, u.p.cfg.DialTimeout)
	defer cancel()
	c, err := u.p.deps.DialUpstream(ctx, client, key.dst)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", key.dst, err)
	}
	return c, nil
}

// dialTLS dials and completes a verified TLS handshake: ServerName is the
// SNI (or the destination IP when the client sent none), roots are the system
// pool plus upstream_ca_bundle, TLS 1.2 minimum, ALPN h2 (when h2) and
// http/1.1. st is the client connection it is dialed for (may be nil in
// shared mode).
func (u *upstream) dialTLS(ctx context.Context, st *connState, key poolKey, h2 bool) (net.Conn, error) {
	shared := !u.p.deps.UpstreamPerClient
	if shared {
		u.entry(key) // make sure the pool exists so verification is remembered
	}
	c, err := u.dial(ctx, clientOf(st), key)
	if err != nil {
		return nil, err
	}
	name := key.sni
	if name == "" {
		name = key.dst.Addr().String()
	}
	protos := alpnH1
	if h2 {
		protos = alpnH2
	}
	tc := tls.Client(c, &tls.Config{
		ServerName: name,
		RootCAs:    u.p.ps().roots,
		MinVersion: tls.VersionTLS12,
		NextProtos: protos,
	})
	hctx, cancel := context.WithTimeout(ctx, u.p.cfg.UpstreamTLSTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls to %s (%s): %w", key.dst, name, err)
	}
	if shared {
		u.markVerified(key)
	}
	return tc, nil
}

var (
	alpnH1 = []string{"http/1.1"}
	alpnH2 = []string{"h2", "http/1.1"}
)

type ssrfError struct{ why string }

func (e *ssrfError) Error() string { return "destination denied by ssrf guard: " + e.why }

// roundTrip is goproxy's RoundTripper: it sends req to the original
// destination of the client connection and never returns an error to
// goproxy (which would turn it into a bare 500): failures become pages.
func (u *upstream) roundTrip(req *http.Request, _ *goproxy.ProxyCtx) (*http.Response, error) {
	ctx := req.Context()
	st, ri := stateFrom(ctx), reqFrom(ctx)
	if ri == nil && st != nil && req.ProtoMajor == 1 {
		ri = st.cur
	}
	if st == nil || ri == nil {
		return nil, errors.New("proxy: request without connection state")
	}
	key := poolKey{dst: st.dst, sni: st.sni, tls: st.isTLS}
	// One allocation for the outgoing request and its URL.
	o := &outReq{req: *req, url: *req.URL}
	out, ou := &o.req, &o.url
	ou.Host = st.dstHostPort
	ou.Scheme = "http"
	if st.isTLS {
		ou.Scheme = "https"
	}
	out.URL = ou
	out.Host = req.Host
	// A client's Connection: close ends the client connection only; the
	// upstream connection stays pooled.
	out.Close = false
	out.RequestURI = ""
	resp, err := u.send(ctx, st, key, out)
	if u.p.deps.UpstreamPerClient && (err != nil || resp.Close) {
		// The client's one upstream connection is ending (or failed):
		// end the client connection after this response, so the client's
		// next request comes on a new connection with a new 5-tuple,
		// instead of redialing the old one (which our TIME_WAIT or the
		// server's could refuse).
		ri.closeClient.Store(true)
	}
	if err == nil {
		return resp, nil
	}
	if ctx.Err() != nil {
		// The client went away; nobody reads the page.
		ri.rec.Action, ri.rec.UpstreamError = "error", "client canceled"
		return u.p.pageResponse(req, 499, "Client Closed Request", "canceled", ri), nil
	}
	status, msg := classifyUpstreamErr(err)
	u.p.stats.upErrs.Add(1)
	u.p.m.upErrs.Inc()
	ri.rec.Action, ri.rec.UpstreamError = "error", msg
	u.p.log.Info("proxy: upstream failed", "dst", st.dst.String(), "sni", st.sni, "err", err)
	return u.p.pageResponse(req, status, http.StatusText(status),
		"The proxy could not complete the request to "+req.Host+": "+msg, ri), nil
}

// send sends out over the fast path when it can take it, else over the
// key's http.Transport.
func (u *upstream) send(ctx context.Context, st *connState, key poolKey, out *http.Request) (*http.Response, error) {
	if !h1.Eligible(out) {
		return u.transport(st, key, out).RoundTrip(out)
	}
	if u.p.deps.UpstreamPerClient {
		// The client's one upstream connection over the fast path: no
		// reader and writer goroutines while the client is idle.
		return st.ownH1(u, key).RoundTrip(ctx, out, func(ctx context.Context) (net.Conn, error) {
			var c net.Conn
			if !key.tls {
				var err error
				if c, err = u.dial(ctx, st.client, key); err != nil {
					return nil, err
				}
			} else if c = st.takePre(key, false); c == nil {
				var err error
				if c, err = u.dialTLS(ctx, st, key, false); err != nil {
					return nil, err
				}
			}
			return st.adopt(c)
		})
	}
	pe := u.entry(key)
	if pe.h1 == nil {
		return pe.tr.RoundTrip(out)
	}
	return pe.h1.RoundTrip(ctx, out, func(ctx context.Context) (net.Conn, error) {
		if !key.tls {
			return u.dial(ctx, st.client, key)
		}
		if c := st.takePre(key, false); c != nil {
			return c, nil
		}
		return u.dialTLS(ctx, st, key, false)
	})
}

// outReq is the copy of a request sent upstream, with its own URL.
type outReq struct {
	req http.Request
	url url.URL
}

// classifyUpstreamErr maps an upstream failure to a status and a message
// safe to show (no secrets: addresses and certificate reasons only).
func classifyUpstreamErr(err error) (int, string) {
	var se *ssrfError
	if errors.As(err, &se) {
		return http.StatusForbidden, se.Error()
	}
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	if errors.As(err, &cve) || errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &cie) {
		return http.StatusBadGateway, "upstream certificate verification failed: " + certReason(err)
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		return http.StatusGatewayTimeout, "upstream timeout: " + err.Error()
	}
	var ae tls.AlertError
	var rhe tls.RecordHeaderError
	if errors.As(err, &ae) || errors.As(err, &rhe) {
		return http.StatusBadGateway, "upstream TLS handshake failed: " + err.Error()
	}
	return http.StatusBadGateway, "upstream connection failed: " + err.Error()
}

func certReason(err error) string {
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	var uae x509.UnknownAuthorityError
	switch {
	case errors.As(err, &hne):
		return "certificate is not valid for the requested name (" + hne.Error() + ")"
	case errors.As(err, &cie):
		return cie.Error()
	case errors.As(err, &uae):
		return "certificate signed by unknown authority"
	}
	return err.Error()
}
