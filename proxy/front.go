package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// handleConn runs the front end for one accepted connection.
func (p *Proxy) handleConn(c net.Conn, isTLS bool) {
	st := p.newState(c, isTLS)
	p.stats.accepted.Add(1)
	p.m.accepted.WithLabelValues(st.rec.Scheme).Inc()
	p.m.active.Inc()
	p.mu.Lock()
	p.active[st] = struct{}{}
	p.mu.Unlock()
	if !st.dst.IsValid() {
		p.closeWith(st, "error", "", "original destination unknown")
		return
	}
	if !isTLS {
		p.serveH1(&servedConn{Conn: c, st: st})
		return
	}
	p.handleTLS(st)
}

// closeWith records a connection that ends without HTTP and closes it.
func (p *Proxy) closeWith(st *connState, action, rule, why string) {
	st.client.Close()
	st.rec.Action, st.rec.Rule, st.rec.UpstreamError = action, rule, why
	st.finish()
}

func (p *Proxy) handleTLS(st *connState) {
	c := st.client
	c.SetReadDeadline(time.Now().Add(p.cfg.ClientHelloTimeout))
	hello, buf, err := ReadClientHello(c)
	if err != nil {
		p.stats.helloFail.Add(1)
		p.m.helloFail.Inc()
		st.rec.BytesIn = int64(len(buf))
		why := "client hello: " + err.Error()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			why = "client hello: timeout, client sent " + fmt.Sprint(len(buf)) + " bytes"
		} else if errors.Is(err, ErrNotTLS) {
			why = "client hello: not TLS"
		}
		p.log.Debug("proxy: bad or missing client hello", "client", st.rec.ClientIP, "err", err)
		p.closeWith(st, "error", "", why)
		return
	}
	c.SetReadDeadline(time.Time{})
	st.rec.SNI = hello.ServerName
	rc := &replayConn{Conn: c, prefix: buf}

	// The policy in force now decides this connection for its lifetime
	// (a reload applies to its next request, checked in handle).
	ps := p.ps()
	st.rec.PolicyVersion = ps.version
	d := p.decideTLS(ps, st, hello)
	denyDetail := ""
	if d.Action != policy.Deny {
		// Destination binding on the SNI, before any upstream byte: a
		// mismatch is denied like a policy deny (a page over a minted
		// leaf, or a close), never spliced or dialed.
		if b := p.checkBinding(ps, st, st.sni, d); b != nil {
			b.apply(&st.rec)
			if b.deny {
				d = policy.Decision{Action: policy.Deny, Rule: b.rule}
				denyDetail = b.detail + " (rule " + b.rule + ")"
			} else if b.rule != "" {
				d.Rule = b.rule // report only: "report_only:bind:..."
			}
		}
	}
	switch d.Action {
	case policy.Splice:
		st.rec.Rule = d.Rule
		p.splice(st, rc)
		return
	case policy.Deny:
		p.stats.denied.Add(1)
		p.m.decisions.WithLabelValues("deny").Inc()
		if denyDetail == "" {
			denyDetail = "Access to " + displayName(hello.ServerName, st) + " is denied by rule " + d.Rule + "."
		}
		fr := &fixedReply{status: http.StatusForbidden, action: "deny", rule: d.Rule,
			title: "Forbidden", detail: denyDetail}
		if p.cfg.DenyTLS == "close" || p.deps.Certs == nil {
			p.closeWith(st, "deny", d.Rule, "")
			return
		}
		st.fixed = fr
		st.rec.Action, st.rec.Rule = "deny", d.Rule
		p.bump(st, rc, hello)
		return
	}
	// Allow: bump. Verify the upstream before minting a leaf for it.
	st.rec.Rule = d.Rule
	if p.deps.Certs == nil {
		p.closeWith(st, "error", d.Rule, "no certificate source configured; cannot bump")
		return
	}
	key := poolKey{dst: st.dst, sni: st.sni, tls: true}
	// Per-client mode always dials first: no pooled connection could serve
	// this client, and the verified one becomes its upstream.
	if p.deps.UpstreamPerClient || !p.up.recentlyVerified(key) {
		ctx, cancel := context.WithTimeout(context.WithValue(p.ctx, stateKey{}, st), p.cfg.DialTimeout+p.cfg.UpstreamTLSTimeout)
		uc, err := p.up.dialTLS(ctx, st, key, p.up.h2())
		cancel()
		if err != nil {
			status, msg := classifyUpstreamErr(err)
			p.stats.upErrs.Add(1)
			p.m.upErrs.Inc()
			st.fixed = &fixedReply{status: status, action: "error", rule: d.Rule, upErr: msg,
				title: http.StatusText(status), detail: "The proxy could not reach " + displayName(hello.ServerName, st) + " safely: " + msg}
			st.rec.Action, st.rec.UpstreamError = "error", msg
		} else {
			st.pre, st.preKey = uc, key
		}
	}
	p.bump(st, rc, hello)
}

func displayName(sni string, st *connState) string {
	if sni != "" {
		return sni
	}
	return st.dst.String()
}

// decideTLS applies the SSRF guard, the ECH and no-SNI settings, then the
// rules.
func (p *Proxy) decideTLS(ps *policyState, st *connState, h *Hello) policy.Decision {
	name, nameErr := policy.NormalizeName(h.ServerName)
	if nameErr == nil {
		st.sni = name
		st.rec.SNI = name
	}
	if why := ps.guard.Check(st.dst.Addr()); why != "" {
		return policy.Decision{Action: policy.Deny, Rule: "ssrf:" + why}
	}
	if h.ECH {
		if d, ok := ps.pol.Special("ech"); ok {
			return d
		}
	}
	if h.ServerName == "" {
		if d, ok := ps.pol.Special("no_sni"); ok {
			return d
		}
		return ps.pol.Decide(st.input(""))
	}
	if nameErr != nil {
		return policy.Decision{Action: policy.Deny, Rule: "invalid-sni"}
	}
	return ps.pol.Decide(st.input(name))
}

// bump completes the client handshake with a minted leaf and serves the
// decrypted connection: HTTP/2 with x/net/http2, HTTP/1.x with serveH1.
func (p *Proxy) bump(st *connState, rc *replayConn, h *Hello) {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.HandshakeTimeout)
	defer cancel()
	cert, err := p.deps.Certs.Certificate(ctx, st.sni, st.dst.Addr())
	if err != nil {
		p.log.Warn("proxy: minting leaf failed", "sni", st.sni, "err", err)
		p.closeWith(st, "error", st.rec.Rule, "minting leaf: "+err.Error())
		return
	}
	protos := []string{"http/1.1"}
	// Per-client mode: no h2 to clients. Its streams would have to share
	// the client's single upstream connection one request at a time (a
	// long poll or SSE stream would stall the others); over HTTP/1.1 a
	// browser opens parallel connections, each with its own upstream.
	if p.cfg.HTTP2 && !p.deps.UpstreamPerClient {
		protos = []string{"h2", "http/1.1"}
	}
	tc := tls.Server(rc, &tls.Config{
		Certificates: []tls.Certificate{*cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   protos,
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		action := "error"
		if st.fixed != nil && st.fixed.action == "deny" {
			action = "deny" // a deny page the client would not accept is still a deny
		}
		p.closeWith(st, action, st.rec.Rule, "client handshake: "+err.Error())
		return
	}
	cs := tc.ConnectionState()
	st.rec.TLSVersion = tlsVersionName(cs.Version)
	st.rec.ALPN = cs.NegotiatedProtocol
	p.stats.bumped.Add(1)
	p.m.decisions.WithLabelValues("bump").Inc()
	sc := &servedConn{Conn: tc, st: st}
	if cs.NegotiatedProtocol == "h2" {
		// net/http's own h2 path needs a *tls.Conn it accepted itself;
		// x/net/http2 serves our prepared conn, with p.srv's timeouts
		// and its graceful shutdown (registered by ConfigureServer).
		p.h2.ServeConn(sc, &http2.ServeConnOpts{
			Context:    context.WithValue(p.ctx, stateKey{}, st),
			BaseConfig: p.srv,
			Handler:    p.srv.Handler,
		})
		sc.Close()
		return
	}
	p.serveH1(sc)
}

// splice connects the client to the original destination without
// decrypting: the peeked hello is replayed upstream, then bytes are copied
// both ways until either side finishes or both are idle.
func (p *Proxy) splice(st *connState, rc *replayConn) {
	p.stats.spliced.Add(1)
	p.m.decisions.WithLabelValues("splice").Inc()
	st.rec.Action = "splice"
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.DialTimeout)
	up, err := p.deps.DialUpstream(ctx, st.client, st.dst)
	cancel()
	if err != nil {
		_, msg := classifyUpstreamErr(err)
		p.closeWith(st, "error", st.rec.Rule, msg)
		return
	}
	in, out := relay(rc, up, p.cfg.SpliceIdleTimeout)
	st.rec.BytesIn, st.rec.BytesOut = in, out
	st.client.Close()
	up.Close()
	st.finish()
}

// relay copies both ways; it returns bytes client->upstream and
// upstream->client. Each direction half-closes its destination at EOF. The
// splice ends when both directions are done or when neither moved a byte for
// idle (a one-way stream keeps the other direction alive).
func relay(client, up net.Conn, idle time.Duration) (in, out int64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { in = copyIdle(up, client, idle, &last); wg.Done() }()
	go func() { out = copyIdle(client, up, idle, &last); wg.Done() }()
	wg.Wait()
	return in, out
}

func copyIdle(dst, src net.Conn, idle time.Duration, last *atomic.Int64) int64 {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var n int64
	var failed bool
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		nr, rerr := src.Read(buf)
		if nr > 0 {
			last.Store(time.Now().UnixNano())
			dst.SetWriteDeadline(time.Now().Add(idle))
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				failed = true
				break
			}
		}
		if rerr != nil {
			var ne net.Error
			if errors.As(rerr, &ne) && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < idle {
				continue // the other direction is active
			}
			failed = rerr != io.EOF
			break
		}
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && !failed {
		cw.CloseWrite()
	} else {
		// Error or idle: tear both sides down so the other direction ends.
		dst.Close()
		src.Close()
	}
	return n
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
