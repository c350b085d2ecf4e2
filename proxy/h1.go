package proxy

import (
	"context"
	"crypto/tls"
	"net/http"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/internal/h1"
)

// The proxy's side of the HTTP/1 engine (proxy/internal/h1): the server
// built from Config, the connection state as its ConnHooks (records and
// fair-share stalls), and Shutdown's wake-up through connState.h1.

// newH1Server configures the HTTP/1.x server of plain and bumped client
// connections; every request goes to handle.
func (p *Proxy) newH1Server() *h1.Server {
	return &h1.Server{
		Handler:           http.HandlerFunc(p.handle),
		MaxHeaderBytes:    p.cfg.MaxHeaderBytes,
		HeaderReadTimeout: p.cfg.HeaderReadTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		ProgressTimeout:   p.cfg.ProgressTimeout,
		Log:               p.log,
	}
}

// serveH1 serves c as HTTP/1.x until it ends (h1.Conn.Serve closes it,
// which finishes its state). Requests find the connection state in their
// context (stateKey).
func (p *Proxy) serveH1(c *servedConn) {
	var cs *tls.ConnectionState
	if tc, ok := c.Conn.(*tls.Conn); ok {
		s := tc.ConnectionState()
		cs = &s
	}
	hc := p.h1.NewConn(context.WithValue(p.ctx, stateKey{}, c.st), c, cs, c.st)
	c.st.h1.Store(hc)
	hc.Serve()
	c.st.h1.Store(nil)
}

// Rejected ships the record of a request the HTTP/1 server refused before
// the handler (h1.ConnHooks): a rejected request is still a request. What
// it asked for is not trusted, so the record has no method, host or path.
func (st *connState) Rejected(status int, reason string, bytesOut int64) {
	st.requests.Add(1)
	rec := st.rec
	rec.Action, rec.Status, rec.BytesOut = "error", status, bytesOut
	rec.UpstreamError = "rejected request: " + reason
	st.p.ship(&rec, time.Now())
}

// Stall notes the HTTP/1 server's progress timeout on the connection
// (h1.ConnHooks).
func (st *connState) Stall(s h1.Stall) {
	switch s {
	case h1.ClientSend:
		st.setStall(stallClientSend)
	case h1.ClientRead:
		st.setStall(stallClientRead)
	}
}

// Stalled reports whether the connection stalled (h1.ConnHooks), told by
// the HTTP/1 server or seen by servedConn.Write.
func (st *connState) Stalled() bool { return st.stall.Load() != stallNone }
