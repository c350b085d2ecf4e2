package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"
	"golang.org/x/net/http/httpguts"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

type reqKey struct{}

// contextWithReq carries an HTTP/2 request's reqInfo to the RoundTripper
// through goproxy (an HTTP/1 connection sets connState.cur instead).
func contextWithReq(ctx context.Context, ri *reqInfo) context.Context {
	return context.WithValue(ctx, reqKey{}, ri)
}

// reqFrom returns the request an HTTP/2 request's context carries (HTTP/1:
// connState.cur).
func reqFrom(ctx context.Context) *reqInfo {
	ri, _ := ctx.Value(reqKey{}).(*reqInfo)
	return ri
}

// reqInfo follows one request from our handler through goproxy into our
// RoundTripper and back, and becomes its record.
type reqInfo struct {
	st       *connState
	stall    atomic.Uint32 // HTTP/2: what stalled on this stream (stall*)
	rec      Record
	start    time.Time
	bytesIn  atomic.Int64
	hijacked net.Conn
	// closeClient asks for Connection: close on the response (per-client
	// mode: the upstream connection is ending).
	closeClient atomic.Bool
	// rw is the request's response writer, part of reqInfo to save an
	// allocation per request.
	rw respWriter
}

// newGoproxy configures goproxy for the decrypted/plain HTTP layer: our
// RoundTripper for every request, client Accept-Encoding kept, no
// proxy-environment transport.
func (p *Proxy) newGoproxy() *goproxy.ProxyHttpServer {
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = slogPrintf{p}
	gp.Verbose = false
	gp.KeepAcceptEncoding = true
	gp.Tr = &http.Transport{Proxy: nil, DisableCompression: true} // never used: RoundTripper is set per request
	gp.ConnectDial = nil
	rt := goproxy.RoundTripperFunc(p.up.roundTrip)
	gp.OnRequest().DoFunc(func(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
		ctx.RoundTripper = rt
		return r, nil
	})
	return gp
}

type slogPrintf struct{ p *Proxy }

func (s slogPrintf) Printf(format string, v ...any) {
	s.p.log.Debug("goproxy", "msg", strings.TrimSpace(fmt.Sprintf(format, v...)))
}

// handle serves one request from a plain or bumped client connection.
func (p *Proxy) handle(w http.ResponseWriter, r *http.Request) {
	st, _ := r.Context().Value(stateKey{}).(*connState)
	if st == nil {
		http.Error(w, "no connection state", http.StatusInternalServerError)
		return
	}
	st.requests.Add(1)
	p.stats.requests.Add(1)
	ri := &reqInfo{st: st, start: time.Now(), rec: st.rec}
	ri.rec.Action, ri.rec.Rule, ri.rec.UpstreamError = "allow", st.rec.Rule, ""
	ri.rec.Host = r.Host
	ri.rec.Method = r.Method
	ri.rec.Path = p.recordPath(r, st.rec.Scheme)
	ri.rec.UserAgent = r.Header.Get("User-Agent")
	ri.rw = respWriter{w: w, ri: ri}
	rw := &ri.rw
	if r.ProtoMajor == 2 {
		// HTTP/2 streams get progress deadlines of their own (an h1
		// connection's are kept by the h1 engine).
		if dl, ok := w.(streamDeadlines); ok {
			sw := &streamWatch{dl: dl, ri: ri, d: p.cfg.ProgressTimeout}
			rw.sw = sw
			defer sw.stop()
			if r.Body != nil && r.Body != http.NoBody {
				r.Body = &progressBody{rc: r.Body, sw: sw}
			}
		}
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &countingBody{rc: r.Body, n: &ri.bytesIn}
	}
	defer p.finishRequest(ri, rw)

	if fr := st.fixed; fr != nil {
		ri.rec.Action, ri.rec.Rule, ri.rec.UpstreamError = fr.action, fr.rule, fr.upErr
		p.writePage(rw, r, fr.status, fr.title, fr.detail, ri)
		return
	}
	// Every request is decided by the policy in force when it arrives:
	// after a reload, the next request on a keep-alive connection too.
	ps := p.ps()
	ri.rec.PolicyVersion = ps.version
	if r.Method == http.MethodConnect {
		p.deny(rw, r, ri, http.StatusMethodNotAllowed, "connect-in-stream", "CONNECT is not allowed through a transparent proxy.")
		return
	}
	name, err := policy.NormalizeName(policy.HostOnly(r.Host))
	if err != nil || name == "" {
		p.deny(rw, r, ri, http.StatusBadRequest, "invalid-host", "The request has a missing or invalid Host.")
		return
	}
	if st.isTLS && st.sni != "" && name != st.sni {
		// Domain fronting: the TLS name was checked, this Host was not
		// the one the upstream certificate is verified for.
		p.deny(rw, r, ri, http.StatusMisdirectedRequest, "sni-host-mismatch",
			"Host "+name+" does not match the TLS server name "+st.sni+".")
		return
	}
	if why := ps.guard.Check(st.dst.Addr()); why != "" {
		p.deny(rw, r, ri, http.StatusForbidden, "ssrf:"+why, "Access to "+st.dst.Addr().String()+" is denied ("+why+").")
		return
	}
	d := ps.pol.Decide(st.input(name))
	ri.rec.Rule = d.Rule
	if d.Action == policy.Deny {
		p.deny(rw, r, ri, http.StatusForbidden, d.Rule, "Access to "+name+" is denied by rule "+d.Rule+".")
		return
	}
	if b := p.checkBinding(ps, st, name, d); b != nil {
		b.apply(&ri.rec)
		if b.deny {
			p.deny(rw, r, ri, http.StatusForbidden, b.rule, b.detail)
			return
		} else if b.rule != "" {
			ri.rec.Rule = b.rule // report only: "report_only:bind:..."
		}
	}
	p.m.requests.WithLabelValues("allow").Inc()
	removeConnectionFields(r.Header)
	if r.Trailer != nil {
		filterTrailers(r)
	}
	r.URL.Scheme = st.rec.Scheme
	r.URL.Host = r.Host
	if r.ProtoMajor == 1 {
		// An HTTP/1 connection serves one request at a time on one
		// goroutine, and goproxy calls our RoundTripper on it: the
		// connection state carries the request (no context and request
		// copy per request).
		st.cur = ri
		p.gp.ServeHTTP(rw, r)
		st.cur = nil
	} else {
		r = r.WithContext(contextWithReq(r.Context(), ri))
		p.gp.ServeHTTP(rw, r)
	}
	if ri.hijacked != nil {
		// goproxy returns from a WebSocket relay without closing the
		// client side.
		ri.hijacked.Close()
	}
}

func (p *Proxy) deny(rw *respWriter, r *http.Request, ri *reqInfo, status int, rule, detail string) {
	ri.rec.Action, ri.rec.Rule = "deny", rule
	p.m.requests.WithLabelValues("deny").Inc()
	p.writePage(rw, r, status, http.StatusText(status), detail+" (rule "+rule+")", ri)
}

// recordPath is the request target the upstream receives (what
// url.URL.RequestURI makes of the outgoing URL, whose scheme is the
// connection's), with the query redacted when redact_query is on. An
// opaque target such as "x:admin/secret" goes upstream as "admin/secret",
// and so it is recorded.
func (p *Proxy) recordPath(r *http.Request, scheme string) string {
	u := r.URL
	path := u.EscapedPath()
	if u.Opaque != "" || path == "" {
		v := *u
		v.Scheme, v.RawQuery, v.ForceQuery = scheme, "", false
		path = v.RequestURI()
	}
	if u.RawQuery == "" && !u.ForceQuery {
		return path
	}
	if p.cfg.RedactQuery {
		return path + "?redacted"
	}
	return path + "?" + u.RawQuery
}

func (p *Proxy) finishRequest(ri *reqInfo, rw *respWriter) {
	if s := ri.stall.Load(); s != stallNone {
		// An HTTP/2 stream: the connection goes on.
		p.stats.stalled.Add(1)
		p.m.stalled.WithLabelValues(stallName(s)).Inc()
		markStalled(&ri.rec, s, p.cfg.ProgressTimeout)
	} else {
		ri.st.markStalled(&ri.rec, p.cfg.ProgressTimeout)
	}
	ri.rec.Status = rw.status
	if ri.rec.Status == 0 {
		ri.rec.Status = http.StatusOK
	}
	ri.rec.BytesIn = ri.bytesIn.Load()
	ri.rec.BytesOut = rw.bytesOut
	if hc, ok := ri.hijacked.(*countingConn); ok {
		ri.rec.BytesIn += hc.in.Load()
		ri.rec.BytesOut += hc.out.Load()
	}
	p.ship(&ri.rec, ri.start)
}

// ship finishes and encodes rec (duration from start) and hands it to the
// Recorder.
func (p *Proxy) ship(rec *Record, start time.Time) {
	now := time.Now()
	rec.Time = now
	rec.DurationMS = float64(now.Sub(start).Microseconds()) / 1000
	id := p.ids.next()
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	b = rec.appendJSON(b, p.cfg.MaxRecordField, id[:])
	if err := p.deps.Recorder.ShipRequest(now, b, rec.Metrics()); err != nil {
		p.stats.shipFail.Add(1)
		p.m.shipFail.Inc()
		p.log.Warn("proxy: record not accepted", "err", err)
	}
	*bp = b
	bufPool.Put(bp)
}

// respWriter counts, captures the status, flushes streaming responses (no
// Content-Length: chunked, SSE) after every write, and tracks hijacks.
type respWriter struct {
	w         http.ResponseWriter
	ri        *reqInfo
	status    int
	bytesOut  int64
	flushEach bool
	sw        *streamWatch // HTTP/2: the stream's progress watch; nil for HTTP/1
}

func (w *respWriter) Header() http.Header { return w.w.Header() }

func (w *respWriter) WriteHeader(code int) {
	if w.status == 0 || w.status < 200 {
		w.status = code
		if code >= 200 {
			w.flushEach = w.w.Header().Get("Content-Length") == ""
			if w.ri.closeClient.Load() && code != http.StatusSwitchingProtocols {
				w.w.Header().Set("Connection", "close")
			}
		}
	}
	w.w.WriteHeader(code)
}

func (w *respWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.sw != nil {
		w.sw.begin(&w.sw.writing)
		defer w.sw.writing.Store(0)
	}
	n, err := w.w.Write(b)
	w.bytesOut += int64(n)
	if w.flushEach && err == nil {
		if f, ok := w.w.(http.Flusher); ok {
			f.Flush()
		}
	}
	return n, err
}

func (w *respWriter) Flush() {
	if f, ok := w.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *respWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.w.(http.Hijacker)
	if !ok {
		return nil, nil, http.ErrNotSupported
	}
	c, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	cc := &countingConn{Conn: c}
	w.ri.hijacked = cc
	return cc, brw, nil
}

// ReadFrom copies a response body through Write (status, counting,
// streaming flushes) with a pooled buffer. goproxy copies every body with
// io.Copy; without ReadFrom (the wrapper hides net/http's own), io.Copy
// would allocate a fresh 32 KiB buffer per request.
func (w *respWriter) ReadFrom(r io.Reader) (int64, error) {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	return io.CopyBuffer(writeOnly{w}, r, *bp)
}

// writeOnly hides respWriter.ReadFrom from io.CopyBuffer (which would
// otherwise call it again).
type writeOnly struct{ w *respWriter }

func (w writeOnly) Write(b []byte) (int, error) { return w.w.Write(b) }

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Unwrap lets http.ResponseController reach the real writer.
func (w *respWriter) Unwrap() http.ResponseWriter { return w.w }

type countingBody struct {
	rc io.ReadCloser
	n  *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }

type countingConn struct {
	net.Conn
	in, out atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// removeConnectionFields deletes the header fields the client named in
// Connection, which apply to its connection only and must not be forwarded
// (RFC 9110 section 7.6.1), and Keep-Alive. goproxy then deletes Connection
// itself (keeping it, and Upgrade, for a WebSocket handshake only): an
// Upgrade named in Connection is removed here unless it asks for a
// WebSocket, so no other protocol switch (h2c) reaches the upstream.
func removeConnectionFields(h http.Header) {
	conn := h["Connection"]
	if len(conn) == 0 {
		return
	}
	ws := httpguts.HeaderValuesContainsToken(h["Upgrade"], "websocket")
	for _, v := range conn {
		for name := range strings.SplitSeq(v, ",") {
			name = textproto.TrimString(name)
			if name == "" || ws && strings.EqualFold(name, "upgrade") || strings.EqualFold(name, "connection") {
				continue
			}
			h.Del(name)
		}
	}
	h.Del("Keep-Alive")
}

// filterTrailers limits a request's trailers to the fields it declared in
// its Trailer header that may appear in a trailer at all
// (httpguts.ValidTrailerHeader: not framing, routing, hop-by-hop or
// authentication fields such as Content-Length, Transfer-Encoding, Host,
// Connection, Authorization). Declared fields that may not are dropped now,
// so the upstream is not told of them; fields the body's end brings that
// were not declared (net/http and x/net/http2 keep those too) are dropped
// when the body reaches EOF, before the outgoing request writes its
// trailers.
func filterTrailers(r *http.Request) {
	for k := range r.Trailer {
		if !httpguts.ValidTrailerHeader(k) {
			delete(r.Trailer, k)
		}
	}
	declared := make([]string, 0, len(r.Trailer))
	for k := range r.Trailer {
		declared = append(declared, k)
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &trailerBody{rc: r.Body, tr: r.Trailer, declared: declared}
	}
}

// trailerBody removes undeclared trailer fields when its body ends.
type trailerBody struct {
	rc       io.ReadCloser
	tr       http.Header
	declared []string
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		for k := range b.tr {
			if !slices.Contains(b.declared, k) {
				delete(b.tr, k)
			}
		}
	}
	return n, err
}

func (b *trailerBody) Close() error { return b.rc.Close() }
