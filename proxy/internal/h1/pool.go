package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/sys/unix"
)

// Pool is the upstream HTTP/1.1 path of one destination: a request is
// written and its response headers read on the caller's goroutine, over
// idle connections the pool keeps. http.Transport runs a read and a write
// goroutine per connection and hands every request and response between
// them over channels; on the keep-alive benchmark that handoff (channel
// operations, select, scheduler wake-ups) cost about 15 % of the proxy's
// CPU. A request body is written by a goroutine of its own while the
// response is read, so a server may answer before it has read the body.
// Upgrade and Expect: 100-continue requests, h2 upstreams and per-client
// mode keep using http.Transport.
//
// What it keeps from http.Transport: a replayable request (no body; GET,
// HEAD, OPTIONS, TRACE or an Idempotency-Key) that fails on a reused
// connection before any response byte is retried on another connection
// (the server may have closed the idle connection); other requests only
// get a reused connection after a non-blocking peek found it open; the
// response-header timeout counts from the end of the request; the request
// context (client gone) aborts the exchange; response headers are capped;
// a connection is reused only after its response was read to the end, its
// request was fully written, and the server did not ask to close. Idle
// connections are not watched while idle (no goroutine per connection):
// the owner calls Sweep to close those idle for longer than
// upstream_idle_timeout.
type Pool struct {
	max int // idle connections kept
	lim Limits

	mu     sync.Mutex
	idle   []*upConn // most recently used last
	closed bool
}

// upConn is one upstream HTTP/1.1 connection of the fast path.
type upConn struct {
	c           net.Conn
	mu          sync.Mutex // orders headersRead and the writer's deadline
	headersRead bool
	br          *bufio.Reader // reads through limit
	bw          *bufio.Writer
	limit       int64 // bytes br may still read from c; caps response headers
	idleAt      time.Time
}

// staleError is a failure before any byte of the response arrived: on a
// reused connection, the request may be retried on another one.
type staleError struct{ err error }

func (e *staleError) Error() string { return e.err.Error() }
func (e *staleError) Unwrap() error { return e.err }

var errRespHeaderTooLong = errors.New("upstream response headers too long")

func newUpConn(c net.Conn) *upConn {
	pc := &upConn{c: c, limit: math.MaxInt64}
	pc.takeBufs()
	return pc
}

// Idle connections hand their bufio buffers back (put) and take them
// again when reused (get): a pool of idle connections, and in per-client
// mode every idle client's own upstream, then holds no buffers.
var (
	upBrPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	upBwPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

func (pc *upConn) takeBufs() {
	pc.br = upBrPool.Get().(*bufio.Reader)
	pc.br.Reset(pc)
	pc.bw = upBwPool.Get().(*bufio.Writer)
	pc.bw.Reset(pc.c)
}

// dropBufs returns the buffers; both are empty (put checks br, every
// request ends with a flush).
func (pc *upConn) dropBufs() {
	pc.br.Reset(nil)
	upBrPool.Put(pc.br)
	pc.bw.Reset(nil)
	upBwPool.Put(pc.bw)
	pc.br, pc.bw = nil, nil
}

// Read is what br reads: c, but no more than limit bytes.
func (pc *upConn) Read(p []byte) (int, error) {
	if pc.limit <= 0 {
		return 0, errRespHeaderTooLong
	}
	if int64(len(p)) > pc.limit {
		p = p[:pc.limit]
	}
	n, err := pc.c.Read(p)
	pc.limit -= int64(n)
	return n, err
}

// NewPool returns a pool keeping up to max idle connections.
func NewPool(max int, lim Limits) *Pool { return &Pool{max: max, lim: lim} }

// Eligible says whether req can take the Pool path.
func Eligible(req *http.Request) bool {
	_, up := req.Header["Upgrade"]
	_, ex := req.Header["Expect"]
	return !up && !ex
}

func hasBody(req *http.Request) bool {
	return req.Body != nil && req.Body != http.NoBody
}

// replayable is http.Request's rule for a request http.Transport may send
// again after a reused connection failed.
func replayable(req *http.Request) bool {
	if hasBody(req) {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, k1 := req.Header["Idempotency-Key"]
	_, k2 := req.Header["X-Idempotency-Key"]
	return k1 || k2
}

// Limits are the upstream limits the pool applies.
type Limits struct {
	IdleTimeout, HeaderTimeout time.Duration
	MaxHeader                  int64
}

// roundTrip sends req (Eligible) over an idle connection or one from
// dial, and returns the response; its Body hands the connection back when
// read to the end, or closes it.
func (hp *Pool) RoundTrip(ctx context.Context, req *http.Request, dial func(context.Context) (net.Conn, error)) (*http.Response, error) {
	if err := validHeader(req.Header); err != nil {
		return nil, err
	}
	retry := replayable(req)
	for {
		pc := hp.get(hp.lim.IdleTimeout, !retry)
		reused := pc != nil
		if pc == nil {
			c, err := dial(ctx)
			if err != nil {
				return nil, err
			}
			pc = newUpConn(c)
		}
		resp, err := hp.do(ctx, pc, req)
		if err == nil {
			return resp, nil
		}
		pc.c.Close()
		var se *staleError
		if errors.As(err, &se) {
			if reused && retry && ctx.Err() == nil {
				continue // the next idle connection, or a fresh dial
			}
			err = se.err
		}
		return nil, err
	}
}

// validHeader refuses what http.Transport refuses: header names and values
// that are not valid HTTP.
func validHeader(h http.Header) error {
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid header field name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid header field value for %q", k)
			}
		}
	}
	return nil
}

// do is one exchange on pc. A failure before any response byte is a
// staleError.
func (hp *Pool) do(ctx context.Context, pc *upConn, req *http.Request) (*http.Response, error) {
	lim := &hp.lim
	var stop func() bool
	if ctx.Done() != nil {
		c := pc.c
		stop = context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	}
	fail := func(err error) (*http.Response, error) {
		if stop != nil {
			stop()
		}
		return nil, err
	}
	pc.headersRead = false
	var wrote chan error
	if hasBody(req) {
		wrote = make(chan error, 1)
		go func() {
			err := pc.write(req, lim.HeaderTimeout)
			if err != nil {
				// Half a request went out (the client's body failed,
				// or the server stopped reading): an early answer
				// (413) may still be on its way, nothing else is.
				pc.mu.Lock()
				if !pc.headersRead {
					pc.c.SetReadDeadline(time.Now().Add(writeFailGrace))
				}
				pc.mu.Unlock()
			}
			wrote <- err
		}()
	} else if err := pc.write(req, lim.HeaderTimeout); err != nil {
		return fail(stale(err))
	}
	pc.limit = lim.MaxHeader
	resp, err := pc.readResponse(req)
	if err != nil {
		if wrote != nil {
			pc.c.Close() // ends the writer, unless it waits on the client
			if werr, _ := writerResult(wrote); werr != nil && !errors.Is(err, errRespHeaderTooLong) {
				err = werr // why the server did not answer
			}
		}
		return fail(err)
	}
	pc.limit = math.MaxInt64
	pc.mu.Lock()
	pc.headersRead = true
	pc.c.SetReadDeadline(time.Time{})
	pc.mu.Unlock()
	if ctx.Err() != nil {
		// The cancel may have set its deadline before ours was cleared:
		// do not read a body nobody waits for.
		pc.c.Close()
		return fail(ctx.Err())
	}
	b := &h1Body{rc: resp.Body, pc: pc, hp: hp, stop: stop, wrote: wrote, keep: !resp.Close}
	if resp.Body == http.NoBody {
		b.finish(true)
		return resp, nil
	}
	resp.Body = b
	return resp, nil
}

// write writes req and arms the response-header timeout, unless the
// response headers already arrived (a server may answer before reading
// the body).
func (pc *upConn) write(req *http.Request, headerTimeout time.Duration) error {
	err := req.Write(pc.bw)
	if err == nil {
		err = pc.bw.Flush()
	}
	if err != nil || headerTimeout <= 0 {
		return err
	}
	pc.mu.Lock()
	if !pc.headersRead {
		pc.c.SetReadDeadline(time.Now().Add(headerTimeout))
	}
	pc.mu.Unlock()
	return nil
}

// readResponse reads the final response to req, skipping 1xx
// informational responses (103 Early Hints). Failing before its first
// byte, it returns a staleError.
func (pc *upConn) readResponse(req *http.Request) (*http.Response, error) {
	if _, err := pc.br.Peek(1); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errRespHeaderTooLong) {
			return nil, err
		}
		return nil, stale(err)
	}
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("upstream switched protocols without an Upgrade request")
		case resp.StatusCode >= 100 && resp.StatusCode < 200:
			continue
		}
		return resp, nil
	}
}

func stale(err error) error { return &staleError{err} }

// h1Body is a fast-path response body. Read to its end, it returns the
// connection to the pool (if the response allows); closed earlier, it
// closes the connection (the rest of the body is never drained: it may be
// large, and nobody wants it).
type h1Body struct {
	rc    io.ReadCloser
	pc    *upConn
	hp    *Pool
	stop  func() bool // the context watch; nil without one
	wrote chan error  // the body writer's result; nil without a body
	keep  bool
	done  atomic.Bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err != nil {
		b.finish(err == io.EOF)
	}
	return n, err
}

func (b *h1Body) Close() error {
	b.finish(false)
	return nil
}

// finish returns the connection to the pool after a complete exchange, or
// closes it.
func (b *h1Body) finish(eof bool) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	reuse := eof && b.keep
	if b.stop != nil && !b.stop() {
		reuse = false // the context fired: its deadline is on the conn
	}
	if b.wrote != nil && reuse {
		err, done := writerResult(b.wrote)
		reuse = done && err == nil
	}
	if reuse {
		b.hp.put(b.pc)
		return
	}
	b.pc.c.Close() // a writer still running fails and ends
}

// writeFailGrace is how long a response is still awaited after writing
// the request failed.
const writeFailGrace = 250 * time.Millisecond

// writerResult waits for the request writer, up to 50 ms like
// http.Transport: the response can be complete before the writer's last
// flush returned. done is false if it is still writing.
func writerResult(wrote chan error) (err error, done bool) {
	select {
	case err := <-wrote:
		return err, true
	default:
	}
	t := time.NewTimer(50 * time.Millisecond)
	defer t.Stop()
	select {
	case err := <-wrote:
		return err, true
	case <-t.C:
		return nil, false
	}
}

// get pops the most recently used idle connection not idle longer than
// maxIdle (0: no limit), closing older ones on the way; with check, only
// one a non-blocking peek finds open and quiet.
func (hp *Pool) get(maxIdle time.Duration, check bool) *upConn {
	var now time.Time
	if maxIdle > 0 {
		now = time.Now()
	}
	hp.mu.Lock()
	defer hp.mu.Unlock()
	for n := len(hp.idle); n > 0; n = len(hp.idle) {
		pc := hp.idle[n-1]
		hp.idle[n-1] = nil
		hp.idle = hp.idle[:n-1]
		if maxIdle > 0 && now.Sub(pc.idleAt) > maxIdle || check && !quiet(pc.c) {
			pc.c.Close()
			continue
		}
		pc.takeBufs()
		return pc
	}
	return nil
}

// put keeps pc for reuse, unless the pool is closed or full, or the server
// sent bytes nobody asked for.
func (hp *Pool) put(pc *upConn) {
	if pc.br.Buffered() > 0 || pc.bw.Buffered() > 0 {
		pc.c.Close()
		return
	}
	pc.dropBufs()
	pc.idleAt = time.Now()
	hp.mu.Lock()
	if hp.closed || len(hp.idle) >= hp.max {
		hp.mu.Unlock()
		pc.c.Close()
		return
	}
	hp.idle = append(hp.idle, pc)
	hp.mu.Unlock()
}

// sweep closes connections idle for longer than idle (all of them for 0).
func (hp *Pool) Sweep(idle time.Duration) {
	now := time.Now()
	hp.mu.Lock()
	defer hp.mu.Unlock()
	kept := hp.idle[:0]
	for _, pc := range hp.idle {
		if idle > 0 && now.Sub(pc.idleAt) <= idle {
			kept = append(kept, pc)
			continue
		}
		pc.c.Close()
	}
	clear(hp.idle[len(kept):])
	hp.idle = kept
}

// close closes the idle connections and makes connections in use close
// when their request ends (the pool was evicted or the proxy stops).
func (hp *Pool) Close() {
	hp.mu.Lock()
	hp.closed = true
	hp.mu.Unlock()
	hp.Sweep(0)
}

// aLongTimeAgo is a deadline in the past: it wakes a blocked read or write.
var aLongTimeAgo = time.Unix(1, 0)

// quiet says whether an idle connection is still open with nothing to
// read: a non-blocking MSG_PEEK on its socket finds neither data (the
// server's close_notify, an unsolicited response) nor end of stream. A
// connection it cannot look into counts as quiet.
func quiet(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	open := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, perr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		open = perr == unix.EAGAIN
		return true
	})
	return err == nil && open
}
