package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Server serves HTTP/1.x on client connections the owner accepted (plain,
// or bumped TLS that did not negotiate h2): NewConn, then Conn.Serve on
// the connection's own goroutine, one request at a time, each handed to
// Handler. Set its fields before the first NewConn and leave them.
//
// Why not net/http.Server: on keep-alive it spent ~10 % of the proxy's CPU
// per request outside the handler — a background-read goroutine for every
// bodyless request (an EAGAIN read, then aborting it with a past deadline
// and a condition wait) and four to six read-deadline changes. Here an
// idle connection's deadline is moved only when it has drifted by more
// than a second, a request whose header is already buffered sets none,
// and the client-gone watch (the background read) starts only for a
// request still running after watchAfter.
//
// Request parsing and framing stay with net/http (http.ReadRequest: the
// Content-Length/Transfer-Encoding rules that guard against smuggling);
// this type adds what net/http.Server adds on top: the header size limit
// (431), Host and header-value checks (400), 505 and 501, Expect
// (100-continue or 417), the header and idle timeouts, keep-alive and
// HTTP/1.0 rules, request-body draining before the next request, panics
// contained to their connection, and graceful shutdown. It adds one thing
// net/http.Server lacks: ProgressTimeout, the fair-share deadline on a
// client that stops sending its body or reading its response.
type Server struct {
	// Handler serves every request that passes the checks above. Its
	// ResponseWriter is an http.Flusher and http.Hijacker; the request's
	// context derives from the one given to NewConn and is canceled when
	// the client leaves.
	Handler http.Handler
	// MaxHeaderBytes caps a request header as net/http.Server's field
	// does (the bytes read may exceed it by 4096); beyond it: 431.
	MaxHeaderBytes int
	// HeaderReadTimeout bounds the wait for a new connection's first
	// request, and for the rest of a request header once its first bytes
	// came.
	HeaderReadTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a keep-alive
	// connection.
	IdleTimeout time.Duration
	// ProgressTimeout ends a connection whose client sent no request-body
	// byte, or took no response byte, for this long (ConnHooks.Stall
	// says which).
	ProgressTimeout time.Duration
	// Log receives handler panics (with their stack). Nil: slog.Default.
	Log *slog.Logger

	shuttingDown atomic.Bool
}

// ConnHooks is what a Conn reports to the owner of its connection, and
// asks of it: the owner keeps the connection's records and fair-share
// state (the proxy's connection state implements it). The methods are
// called on the connection's goroutine, Stall also on a handler's.
type ConnHooks interface {
	// Rejected tells of a request refused before the Handler, answered
	// by the server itself: status, the reason sent, and the bytes of
	// the answer.
	Rejected(status int, reason string, bytesOut int64)
	// Stall tells that the client made no progress for ProgressTimeout;
	// the connection ends.
	Stall(Stall)
	// Stalled reports whether the connection stalled (told by Stall, or
	// seen by the owner itself).
	Stalled() bool
}

// Stall is what a client stopped doing (ConnHooks.Stall).
type Stall int

const (
	// ClientSend: the client stopped sending its request body.
	ClientSend Stall = iota + 1
	// ClientRead: the client stopped reading the response.
	ClientRead
)

// Conn is the server side of one client connection. Only its WakeIfIdle
// may be called from another goroutine.
type Conn struct {
	srv   *Server
	conn  net.Conn // Close finishes the owner's connection state
	hooks ConnHooks
	wire  wireReader
	br    *bufio.Reader
	bw    *bufio.Writer
	out   progressWriter // bw's destination: the conn with progress deadlines

	ctx      context.Context
	cancel   context.CancelCauseFunc
	remote   string
	tlsState *tls.ConnectionState
	hdr      http.Header // response header, cleared between requests
	w        response
	rd       time.Time // read deadline last set ("" = none)
	date     [len(http.TimeFormat)]byte
	one      [1]byte // waitLean's read (here, the date's padding)
	dateSec  int64
	postTol  bool // last request was a POST (tolerate stray CRLF)

	wmu      sync.Mutex
	watchT   *time.Timer
	armed    bool // a bodyless request is running
	watching bool // the watcher goroutine is reading
	gone     bool // the watcher saw the client leave
	wdone    chan struct{}
}

const (
	// watchAfter is how long a bodyless request runs before its client
	// connection is watched for the client leaving (which cancels the
	// request's upstream wait).
	watchAfter = 250 * time.Millisecond
	// maxDrain is how much unread request body is discarded to keep a
	// connection alive (net/http's figure).
	maxDrain = 256 << 10
)

var (
	errTooLarge   = errors.New("request header too large")
	errShutdown   = errors.New("proxy shutting down")
	errClientGone = errors.New("client connection closed")
	crlfcrlf      = []byte("\r\n\r\n")
	brPool        = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	bwPool        = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// statusError is a request rejected before the handler, with its status.
type statusError struct {
	code int
	text string
}

func (e statusError) Error() string { return e.text }

// NewConn prepares the server side of client connection c; Serve serves
// it. ctx is the base of its requests' contexts (the owner's values ride
// on it). tlsState is c's TLS state when c carries decrypted TLS (it
// becomes Request.TLS, and an idle keep-alive connection then holds no
// buffers), nil for plain HTTP. hooks receives what the owner records.
// After a 431 answer the server half-closes c when c has a CloseWrite
// method.
func (srv *Server) NewConn(ctx context.Context, c net.Conn, tlsState *tls.ConnectionState, hooks ConnHooks) *Conn {
	s := &Conn{srv: srv, conn: c, hooks: hooks, hdr: make(http.Header), tlsState: tlsState}
	s.wire.c = c
	s.br = brPool.Get().(*bufio.Reader)
	s.br.Reset(&s.wire)
	s.out.s = s
	s.bw = bwPool.Get().(*bufio.Writer)
	s.bw.Reset(&s.out)
	s.ctx, s.cancel = context.WithCancelCause(ctx)
	s.remote = c.RemoteAddr().String()
	return s
}

// BeginShutdown starts the server's graceful shutdown: every response
// from now on ends its connection (Connection: close) and no connection
// waits for another request. The server does not track its connections:
// the owner then calls WakeIfIdle on each one it holds.
func (srv *Server) BeginShutdown() { srv.shuttingDown.Store(true) }

func (srv *Server) log() *slog.Logger {
	if srv.Log != nil {
		return srv.Log
	}
	return slog.Default()
}

// Serve serves the connection until the client leaves, a request or
// response ends the connection, or shutdown; then it closes the
// connection (unless a handler took it over with Hijack).
func (s *Conn) Serve() {
	defer s.close()
	for first := true; ; first = false {
		req, err := s.readRequest(first)
		if err != nil {
			s.reject(err)
			return
		}
		if !s.serve(req) || s.srv.shuttingDown.Load() {
			return
		}
	}
}

func (s *Conn) close() {
	s.cancel(errClientGone)
	if s.watchT != nil {
		s.watchT.Stop()
	}
	if s.w.hijacked {
		return // the handler owns the conn and its buffers now
	}
	s.bw.Flush()
	s.conn.Close()
	s.br.Reset(nil)
	brPool.Put(s.br)
	s.bw.Reset(nil)
	bwPool.Put(s.bw)
}

// setReadDeadline sets the connection's read deadline and remembers it.
func (s *Conn) setReadDeadline(t time.Time) {
	s.rd = t
	s.conn.SetReadDeadline(t)
}

// WakeIfIdle is the shutdown's nudge (after BeginShutdown) to a
// connection waiting for a request: one that served a request stops
// waiting at once; a new one gets up to firstRequestGrace for the request
// it may have in flight (net/http gives new connections 5 s too). A
// connection serving a request finishes it.
func (s *Conn) WakeIfIdle() {
	switch s.wire.wait.Load() {
	case waitNext:
		s.conn.SetReadDeadline(aLongTimeAgo)
	case waitFirst:
		s.conn.SetReadDeadline(time.Now().Add(min(firstRequestGrace, s.srv.HeaderReadTimeout)))
	}
}

// firstRequestGrace: see WakeIfIdle.
const firstRequestGrace = 5 * time.Second

// What a connection's loop is waiting for (wireReader.wait).
const (
	waitNone = iota
	waitFirst
	waitNext
)

// readRequest waits for and reads the next request, applying the idle and
// header timeouts and the header size limit.
func (s *Conn) readRequest(first bool) (*http.Request, error) {
	cfg := s.srv
	// The limit counts from here, the wait for the first byte included.
	buffered, _ := s.br.Peek(s.br.Buffered())
	s.wire.startHeader(int64(cfg.MaxHeaderBytes)+4096, buffered)
	if s.br.Buffered() == 0 {
		now := time.Now()
		if first {
			s.setReadDeadline(now.Add(cfg.HeaderReadTimeout))
		} else if slack := min(cfg.IdleTimeout/10, time.Second); s.rd.IsZero() || s.rd.Before(now.Add(cfg.IdleTimeout-slack)) {
			// Moved only when it has drifted: a busy keep-alive
			// connection sets no deadline per request.
			s.setReadDeadline(now.Add(cfg.IdleTimeout))
		}
		if first {
			s.wire.wait.Store(waitFirst)
			if s.srv.shuttingDown.Load() {
				s.WakeIfIdle() // the owner may have looked before
			}
		} else {
			s.wire.wait.Store(waitNext)
			if s.srv.shuttingDown.Load() {
				s.wire.wait.Store(waitNone)
				return nil, errShutdown
			}
		}
		var err error
		if s.tlsState != nil && !first {
			err = s.waitLean()
		} else {
			_, err = s.br.Peek(1)
		}
		s.wire.wait.Store(waitNone)
		if err != nil {
			if s.srv.shuttingDown.Load() {
				return nil, errShutdown
			}
			return nil, err
		}
	}
	if s.postTol {
		// RFC 9112 section 2.2: tolerate a CRLF after a POST body.
		b, _ := s.br.Peek(min(2, s.br.Buffered()))
		n := 0
		for n < len(b) && (b[n] == '\r' || b[n] == '\n') {
			n++
		}
		s.br.Discard(n)
	}
	buffered, _ = s.br.Peek(s.br.Buffered())
	if !first && !bytes.Contains(buffered, crlfcrlf) {
		// The header is not all here yet: it must arrive in time.
		s.setReadDeadline(time.Now().Add(cfg.HeaderReadTimeout))
	}
	req, err := http.ReadRequest(s.br)
	hit := s.wire.hitLimit()
	raw := s.wire.endHeader()
	if err != nil {
		if hit {
			return nil, errTooLarge
		}
		if strings.HasPrefix(err.Error(), "unsupported transfer encoding") {
			return nil, statusError{http.StatusNotImplemented, "Unsupported transfer encoding"}
		}
		if isReadError(err) {
			return nil, err
		}
		return nil, statusError{http.StatusBadRequest, "Bad Request"}
	}
	s.postTol = req.Method == http.MethodPost
	if req.ProtoMajor != 1 {
		return nil, statusError{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
	}
	f := scanFields(raw)
	switch {
	case f.host == 0 && req.ProtoAtLeast(1, 1) && req.Method != http.MethodConnect:
		return nil, statusError{http.StatusBadRequest, "missing required Host header"}
	case f.host > 1:
		return nil, statusError{http.StatusBadRequest, "too many Host headers"}
	}
	// RFC 9112 sections 6.1 and 6.3: Transfer-Encoding with
	// Content-Length, or in HTTP/1.0, is framing a smuggler may read
	// differently; ReadRequest settles how the body is read, and the
	// connection ends after the response (ReadRequest hides both
	// fields, hence the scan).
	if f.transferEncoding > 0 && (f.contentLength > 0 || req.ProtoMinor == 0) {
		req.Close = true
	}
	if !httpguts.ValidHostHeader(req.Host) {
		return nil, statusError{http.StatusBadRequest, "malformed Host header"}
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, statusError{http.StatusBadRequest, "invalid header name"}
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, statusError{http.StatusBadRequest, "invalid header value"}
			}
		}
	}
	return req, nil
}

// waitLean waits for the first byte of the next request on a bumped
// keep-alive connection without holding the connection's bufio buffers:
// they go back to their pools while the client is idle (an idle
// connection is the common state of a keep-alive connection, and 8 KiB of
// buffers per connection were a large part of its cost). The byte is read
// through the TLS connection (which decrypts a whole record into its own
// buffer, so this costs no extra system call) and handed to the
// bufio.Reader through wireReader.
func (s *Conn) waitLean() error {
	if s.bw.Buffered() > 0 {
		_, err := s.br.Peek(1) // cannot happen: every response ends flushed
		return err
	}
	s.br.Reset(nil)
	brPool.Put(s.br)
	s.bw.Reset(nil)
	bwPool.Put(s.bw)
	s.br, s.bw = nil, nil
	n, err := s.conn.Read(s.one[:])
	s.br = brPool.Get().(*bufio.Reader)
	s.br.Reset(&s.wire)
	s.bw = bwPool.Get().(*bufio.Writer)
	s.bw.Reset(&s.out)
	if n == 1 {
		s.wire.unread(s.one[0])
		_, err = s.br.Peek(1) // fill: the rest of the record, for the header check
		return err
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// fields counts the request header fields that http.ReadRequest folds
// into the Request and deletes.
type fields struct{ host, contentLength, transferEncoding int }

// scanFields counts them in a raw request header (the request line,
// fields, blank line).
func scanFields(raw []byte) fields {
	var f fields
	first := true
	for len(raw) > 0 {
		i := bytes.IndexByte(raw, '\n')
		line := raw
		if i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if first {
			first = false
			continue
		}
		if len(line) == 0 {
			break
		}
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch {
		case bytes.EqualFold(name, []byte("host")):
			f.host++
		case bytes.EqualFold(name, []byte("content-length")):
			f.contentLength++
		case bytes.EqualFold(name, []byte("transfer-encoding")):
			f.transferEncoding++
		}
	}
	return f
}

func isReadError(err error) bool {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return true
	}
	var ne net.Error // *net.OpError included
	return errors.As(err, &ne)
}

// reject answers a request that failed before the handler (or says
// nothing when the client left or timed out) and lets Serve close.
func (s *Conn) reject(err error) {
	var se statusError
	switch {
	case errors.Is(err, errTooLarge):
		se = statusError{http.StatusRequestHeaderFieldsTooLarge, "Request Header Fields Too Large"}
	case errors.As(err, &se):
	default:
		return
	}
	s.conn.SetWriteDeadline(time.Now().Add(s.srv.HeaderReadTimeout))
	text := se.text
	if text != http.StatusText(se.code) {
		text = http.StatusText(se.code) + ": " + text
	}
	n, _ := fmt.Fprintf(s.bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%d %s",
		se.code, http.StatusText(se.code), len(text)+4, se.code, text)
	s.bw.Flush()
	s.hooks.Rejected(se.code, text, int64(n))
	if se.code == http.StatusRequestHeaderFieldsTooLarge {
		// The client may still be sending: closing with its bytes
		// unread would reset the connection and could destroy the
		// answer. Half-close, then read what comes for a moment.
		if cw, ok := s.conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		s.conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		io.CopyN(io.Discard, s.conn, maxDrain)
	}
}

// serve runs one request through the handler and finishes its response;
// it reports whether the connection may serve another.
func (s *Conn) serve(req *http.Request) (keep bool) {
	req = req.WithContext(s.ctx)
	req.RemoteAddr = s.remote
	req.TLS = s.tlsState
	bodyless := req.Body == nil || req.Body == http.NoBody
	var body *reqBody
	if !bodyless {
		body = &reqBody{s: s, rc: req.Body}
		req.Body = body
		// Bodies are read at the client's pace, as long as it keeps
		// sending (reqBody.Read moves the deadline).
		s.extendRead()
	}
	clear(s.hdr)
	w := &s.w
	*w = response{s: s, req: req, hdr: s.hdr, clen: -1, wantClose: req.Close}
	if req.ProtoMinor == 0 && !req.Close {
		w.keepAlive10 = httpguts.HeaderValuesContainsToken(req.Header["Connection"], "keep-alive")
		w.wantClose = !w.keepAlive10
	}
	if e := req.Header["Expect"]; len(e) > 0 {
		if len(e) != 1 || !strings.EqualFold(e[0], "100-continue") {
			w.wantClose = true
			w.hdr.Set("Content-Length", "0")
			w.WriteHeader(http.StatusExpectationFailed)
			w.finish()
			s.hooks.Rejected(http.StatusExpectationFailed, http.StatusText(http.StatusExpectationFailed), 0)
			return false
		}
		w.expectContinue = body != nil && req.ProtoAtLeast(1, 1)
	}
	if bodyless {
		s.arm()
	}
	panicked := s.runHandler(w, req)
	if bodyless {
		s.disarm()
	}
	if w.hijacked {
		return false
	}
	if panicked {
		// As in net/http, the response is left unfinished: no status
		// line made up for a handler that wrote none, no last chunk
		// after a partial body, so the client sees the failure instead
		// of a complete-looking response. close flushes what the
		// handler wrote.
		if body != nil {
			body.abort()
		}
		return false
	}
	w.finish()
	if body != nil && !body.finish() {
		return false
	}
	return !w.closeAfter && !w.failed && !s.gone
}

// runHandler calls the Handler; a panic ends only this connection (as in
// net/http), logged with its stack (not for http.ErrAbortHandler).
func (s *Conn) runHandler(w *response, req *http.Request) (panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			panicked = true
			w.closeAfter = true
			w.failed = true
			if v != http.ErrAbortHandler {
				s.srv.log().Error("proxy: handler panic", "client", s.remote, "host", req.Host, "panic", v, "stack", string(debug.Stack()))
			}
		}
	}()
	s.srv.Handler.ServeHTTP(w, req)
	return false
}

// arm starts the timer that begins watching the client connection if the
// request is still running after watchAfter.
func (s *Conn) arm() {
	s.wmu.Lock()
	s.armed = true
	s.wmu.Unlock()
	if s.watchT == nil {
		s.watchT = time.AfterFunc(watchAfter, s.watch)
	} else {
		s.watchT.Reset(watchAfter)
	}
}

// disarm stops the timer or, when the watcher is reading, interrupts it
// and waits for it.
func (s *Conn) disarm() {
	s.wmu.Lock()
	s.armed = false
	watching, done := s.watching, s.wdone
	if watching {
		s.conn.SetReadDeadline(aLongTimeAgo)
	}
	s.wmu.Unlock()
	if !watching {
		if s.watchT != nil {
			s.watchT.Stop()
		}
		return
	}
	<-done
	s.wmu.Lock()
	s.watching = false
	s.wmu.Unlock()
	s.rd = aLongTimeAgo // the next wait sets a fresh one
}

// watch is net/http's background read, started late: a read that ends in
// EOF or an error means the client left, which cancels the request's
// context (ending its upstream wait). Bytes that arrive (a pipelined
// request) stay buffered for the next readRequest.
func (s *Conn) watch() {
	s.wmu.Lock()
	if !s.armed || s.watching {
		s.wmu.Unlock()
		return
	}
	s.watching = true
	s.wdone = make(chan struct{})
	done := s.wdone
	s.conn.SetReadDeadline(time.Time{})
	s.wmu.Unlock()
	_, err := s.br.Peek(1)
	if err != nil {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			s.gone = true
			s.cancel(errClientGone)
		}
	}
	close(done)
}

// wireReader sits between the connection and the bufio.Reader. While a
// request header is read it caps the bytes taken off the wire (net/http's
// MaxHeaderBytes + 4096) and keeps a copy of them for scanFields.
type wireReader struct {
	c         net.Conn
	remain    int64
	raw       []byte
	wait      atomic.Int32 // waitFirst or waitNext while the loop waits (Shutdown wakes it)
	limited   bool
	recording bool
	pending   byte // a byte read by waitLean, returned first
	hasPend   bool
}

// unread makes b the next byte Read returns.
func (r *wireReader) unread(b byte) { r.pending, r.hasPend = b, true }

func (r *wireReader) startHeader(limit int64, buffered []byte) {
	r.limited, r.remain = true, limit
	r.raw = append(r.raw[:0], buffered...)
	r.recording = true
}

func (r *wireReader) hitLimit() bool { return r.limited && r.remain <= 0 }

// endHeader lifts the limit and returns the recorded bytes (valid until
// the next startHeader).
func (r *wireReader) endHeader() []byte {
	r.limited, r.recording = false, false
	raw := r.raw
	if cap(r.raw) > 8<<10 {
		r.raw = nil // a huge header: do not keep its buffer
	}
	return raw
}

func (r *wireReader) Read(p []byte) (int, error) {
	if r.limited {
		if r.remain <= 0 {
			return 0, io.EOF
		}
		if int64(len(p)) > r.remain {
			p = p[:r.remain]
		}
	}
	var n int
	var err error
	if r.hasPend && len(p) > 0 {
		// The pending byte and what else the TLS connection holds of
		// its record (it blocks only if that record had one byte).
		p[0], n, r.hasPend = r.pending, 1, false
		if len(p) > 1 {
			var m int
			m, err = r.c.Read(p[1:])
			n += m
		}
	} else {
		n, err = r.c.Read(p)
	}
	if r.limited {
		r.remain -= int64(n)
	}
	if r.recording {
		r.raw = append(r.raw, p[:n]...)
	}
	return n, err
}

// extendRead moves the connection's read deadline to ProgressTimeout from
// now while a request body is read, when it has drifted by more than an
// eighth (no deadline change per read), or when a longer one (the header
// timeout) is in place.
func (s *Conn) extendRead() {
	d := s.srv.ProgressTimeout
	now := time.Now()
	if s.rd.IsZero() || s.rd.Before(now.Add(d-d/8)) || s.rd.After(now.Add(d)) {
		s.setReadDeadline(now.Add(d))
	}
}

// progressWriter is what a connection's bufio.Writer writes to: the
// connection, with a write deadline ProgressTimeout ahead of every write
// (moved only when it has drifted by more than an eighth). A write the
// client does not take in time ends the connection, told as ClientRead.
type progressWriter struct {
	s  *Conn
	wd time.Time // write deadline last set
}

func (o *progressWriter) Write(b []byte) (int, error) {
	s := o.s
	d := s.srv.ProgressTimeout
	now := time.Now()
	if o.wd.Before(now.Add(d - d/8)) {
		o.wd = now.Add(d)
		s.conn.SetWriteDeadline(o.wd)
	}
	n, err := s.conn.Write(b)
	if err != nil && isTimeoutErr(err) && !time.Now().Before(o.wd) {
		s.hooks.Stall(ClientRead)
	}
	return n, err
}

// isTimeoutErr says whether err is a deadline error.
func isTimeoutErr(err error) bool {
	ne, ok := err.(interface{ Timeout() bool })
	if ok && ne.Timeout() {
		return true
	}
	return err != nil && (os.IsTimeout(err) || strings.Contains(err.Error(), "deadline exceeded"))
}
