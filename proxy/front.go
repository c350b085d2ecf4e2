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
		p.serveH1(p.served(c, st))
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
	// crypto/tls accepted these bytes; a hello our fingerprint parser
	// cannot read just leaves ja4/ja3 empty.
	st.rec.Fingerprint.Compute(buf)
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
		// HTTP/2 is not mirrored (see package mirror).
		p.countUnmirroredH2()
		p.h2.ServeConn(sc, &http2.ServeConnOpts{
			Context:    context.WithValue(p.ctx, stateKey{}, st),
			BaseConfig: p.srv,
			Handler:    p.srv.Handler,
		})
		sc.Close()
		return
	}
	p.serveH1(p.served(tc, st))
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
	in, out, stall, notTLS := relay(rc, up, p.cfg.SpliceIdleTimeout, p.cfg.ProgressTimeout)
	st.rec.BytesIn, st.rec.BytesOut = in, out
	switch {
	case notTLS != nil:
		p.m.decisions.WithLabelValues("not-tls").Inc()
		st.rec.UpstreamError = "not-tls after splice by rule " + st.rec.Rule + ": " + notTLS.Error()
		st.rec.Action, st.rec.Rule = "deny", "not-tls"
		p.log.Debug("proxy: splice closed: not TLS", "client", st.rec.ClientIP, "dst", st.rec.DstIP, "sni", st.rec.SNI, "err", notTLS)
	case stall != stallNone:
		st.setStall(stall)
		st.markStalled(&st.rec, p.cfg.ProgressTimeout)
	}
	st.client.Close()
	up.Close()
	st.finish()
}

// relay copies both ways; it returns bytes client->upstream and
// upstream->client. Each direction half-closes its destination at EOF. The
// splice ends when both directions are done or when neither moved a byte for
// idle (a one-way stream keeps the other direction alive), or when a write
// is not taken within progress (stall says which side stopped reading).
// Both directions must be TLS records from the first byte (the replayed
// ClientHello) on: the first malformed record header ends the splice, and
// notTLS says which side sent it.
func relay(client, up net.Conn, idle, progress time.Duration) (in, out int64, stall uint32, notTLS error) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	var upStalled, clientStalled bool
	var errIn, errOut error
	wg.Add(2)
	go func() { in, upStalled, errIn = copyIdle(up, client, idle, progress, &last); wg.Done() }()
	go func() { out, clientStalled, errOut = copyIdle(client, up, idle, progress, &last); wg.Done() }()
	wg.Wait()
	switch {
	case errIn != nil:
		notTLS = fmt.Errorf("client sent %w", errIn)
	case errOut != nil:
		notTLS = fmt.Errorf("upstream sent %w", errOut)
	}
	switch {
	case clientStalled:
		stall = stallClientRead
	case upStalled:
		stall = stallUpRead
	}
	return in, out, stall, notTLS
}

// copyIdle copies src to dst until EOF, an error or idle; it passes only
// well-framed TLS records and returns the framing error that stopped it.
// An incomplete record header at the end of a read is held at the front of
// the buffer until the next read completes it, so no byte of a malformed
// header reaches dst. stalled reports a write to dst that was not taken
// within the write timeout (min(idle, progress)).
func copyIdle(dst, src net.Conn, idle, progress time.Duration, last *atomic.Int64) (n int64, stalled bool, frameErr error) {
	wt := min(idle, progress)
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var failed bool
	var fr tlsFramer
	hold := 0
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		nr, rerr := src.Read(buf[hold:])
		if nr > 0 {
			last.Store(time.Now().UnixNano())
			data := buf[:hold+nr]
			pass, ferr := fr.scan(data)
			if pass > 0 {
				dst.SetWriteDeadline(time.Now().Add(wt))
				nw, werr := dst.Write(data[:pass])
				n += int64(nw)
				if werr != nil {
					failed = true
					stalled = isTimeoutErr(werr)
					break
				}
			}
			if ferr != nil {
				frameErr, failed = ferr, true
				break
			}
			hold = copy(buf, data[pass:])
		}
		if rerr != nil {
			var ne net.Error
			if errors.As(rerr, &ne) && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < idle {
				continue // the other direction is active
			}
			if rerr == io.EOF && hold > 0 {
				frameErr = fmt.Errorf("%w: stream ended inside a TLS record header (% x)", errNotTLS, buf[:hold])
			}
			failed = rerr != io.EOF || frameErr != nil
			break
		}
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && !failed {
		cw.CloseWrite()
	} else {
		// Error, idle, stall or not TLS: tear both sides down so the other
		// direction ends.
		dst.Close()
		src.Close()
	}
	return n, stalled, frameErr
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
