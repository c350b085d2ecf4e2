package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// response is the http.ResponseWriter (with Flusher and Hijacker) of one
// request on a Conn. It frames the body the way net/http.Server does
// — Content-Length when the handler set a valid one, chunked (with
// trailers) for HTTP/1.1 otherwise, close-delimited for HTTP/1.0 — and
// decides whether the connection can serve another request. It does not
// sniff a Content-Type: a proxy passes on what the origin sent.
type response struct {
	s   *Conn
	req *http.Request
	hdr http.Header
	// mu orders the 100 Continue line, written from whichever goroutine
	// first reads the request body, with the response.
	mu            sync.Mutex
	wroteHeader   bool
	wroteContinue bool
	// expectContinue: the request asked for 100-continue; until it is
	// sent, the client may be holding its body back.
	expectContinue bool
	status         int
	bodyAllowed    bool
	head           bool
	chunked        bool
	clen           int64 // declared Content-Length, -1 if none
	written        int64
	wantClose      bool // the request asked to close
	keepAlive10    bool // an HTTP/1.0 request asked for keep-alive
	closeAfter     bool // the connection ends after this response
	failed         bool // a write to the client failed
	hijacked       bool
	trailers       []string
}

var zeroLength = []string{"0"}

func (w *response) Header() http.Header { return w.hdr }

func (w *response) WriteHeader(code int) {
	w.mu.Lock()
	w.writeHeaderLocked(code)
	w.mu.Unlock()
}

func (w *response) writeHeaderLocked(code int) {
	if w.hijacked || w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		code = http.StatusInternalServerError
	}
	bw := w.s.bw
	if code < 200 && code != http.StatusSwitchingProtocols {
		// Informational (103 Early Hints): sent now, as given.
		w.writeStatus(code)
		w.writeFields(w.hdr)
		bw.WriteString("\r\n")
		if err := bw.Flush(); err != nil {
			w.failed = true
		}
		return
	}
	w.wroteHeader, w.status = true, code
	h := w.hdr
	w.head = w.req.Method == http.MethodHead
	w.bodyAllowed = code != http.StatusNoContent && code != http.StatusNotModified && code != http.StatusSwitchingProtocols
	delete(h, "Transfer-Encoding") // framing is ours
	for _, v := range h["Trailer"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				w.trailers = append(w.trailers, http.CanonicalHeaderKey(name))
			}
		}
	}
	if cl, ok := h["Content-Length"]; ok {
		n, err := strconv.ParseUint(strings.TrimSpace(cl[0]), 10, 63)
		switch {
		case err != nil || len(cl) != 1 || code == http.StatusNoContent || code == http.StatusSwitchingProtocols:
			delete(h, "Content-Length")
		case w.trailers != nil && !w.head && w.req.ProtoAtLeast(1, 1):
			delete(h, "Content-Length") // trailers need chunking
		case !w.head && w.bodyAllowed:
			w.clen = int64(n)
		}
	}
	switch {
	case code == http.StatusSwitchingProtocols, !w.bodyAllowed, w.head, w.clen >= 0:
	case w.req.ProtoAtLeast(1, 1):
		w.chunked = true
	default:
		w.closeAfter = true // HTTP/1.0: the body ends with the connection
	}
	if w.wantClose || w.s.srv.shuttingDown.Load() || httpguts.HeaderValuesContainsToken(h["Connection"], "close") ||
		w.expectContinue && !w.wroteContinue {
		// (The client never asked for the body: whether it sends it
		// anyway is unknown, so the connection cannot go on.)
		w.closeAfter = true
	}
	if code != http.StatusSwitchingProtocols {
		if w.closeAfter {
			h["Connection"] = connClose
		} else if w.keepAlive10 {
			h["Connection"] = connKeepAlive
		}
	}
	w.writeStatus(code)
	w.writeFields(h)
	if _, ok := h["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.Write(w.s.httpDate())
		bw.WriteString("\r\n")
	}
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	bw.WriteString("\r\n")
}

var (
	connClose     = []string{"close"}
	connKeepAlive = []string{"keep-alive"}
)

func (w *response) writeStatus(code int) {
	bw := w.s.bw
	var num [3]byte
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(num[:0], int64(code), 10))
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code " + strconv.Itoa(code))
	}
	bw.WriteString("\r\n")
}

// writeFields writes header fields: invalid names are skipped, line
// breaks in values become spaces (no response splitting), and
// pre-declared trailers (http.TrailerPrefix) wait for the end.
func (w *response) writeFields(h http.Header) {
	bw := w.s.bw
	for k, vv := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
}

// writeField writes one "name: value" line; line breaks in the value
// become spaces.
func writeField(bw *bufio.Writer, name, v string) {
	bw.WriteString(name)
	bw.WriteString(": ")
	v = strings.TrimSpace(v)
	for {
		i := strings.IndexAny(v, "\r\n")
		if i < 0 {
			bw.WriteString(v)
			break
		}
		bw.WriteString(v[:i])
		bw.WriteByte(' ')
		v = v[i+1:]
	}
	bw.WriteString("\r\n")
}

// httpDate is the Date field value, formatted once per second.
func (s *Conn) httpDate() []byte {
	now := time.Now()
	if sec := now.Unix(); sec != s.dateSec {
		s.dateSec = sec
		now.UTC().AppendFormat(s.date[:0], http.TimeFormat)
	}
	return s.date[:]
}

func (w *response) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.writeHeaderLocked(http.StatusOK)
	}
	switch {
	case !w.bodyAllowed:
		return 0, http.ErrBodyNotAllowed
	case w.head:
		return len(b), nil
	case w.clen >= 0 && w.written+int64(len(b)) > w.clen:
		w.closeAfter = true
		return 0, http.ErrContentLength
	case len(b) == 0:
		return 0, nil
	}
	bw := w.s.bw
	if w.chunked {
		var size [16]byte
		bw.Write(strconv.AppendInt(size[:0], int64(len(b)), 16))
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(b)
	if w.chunked && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	w.written += int64(n)
	if err != nil {
		w.failed = true
	}
	return n, err
}

// Flush sends what is buffered (the header first, if not yet written).
func (w *response) Flush() { w.FlushError() }

// FlushError is Flush reporting the write error (http.ResponseController).
func (w *response) FlushError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hijacked {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.writeHeaderLocked(http.StatusOK)
	}
	err := w.s.bw.Flush()
	if err != nil {
		w.failed = true
	}
	return err
}

// writeContinue answers Expect: 100-continue, once, unless the final
// response has already started.
func (w *response) writeContinue() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.wroteHeader || w.wroteContinue || w.hijacked {
		return
	}
	w.wroteContinue = true
	w.s.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	if err := w.s.bw.Flush(); err != nil {
		w.failed = true
	}
}

// finish completes the response after the handler returned: header if
// none was written, the last chunk and trailers, and the flush.
func (w *response) finish() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hijacked {
		return
	}
	if !w.wroteHeader {
		if _, ok := w.hdr["Content-Length"]; !ok && w.req.Method != http.MethodHead && len(w.hdr["Trailer"]) == 0 {
			w.hdr["Content-Length"] = zeroLength
		}
		w.writeHeaderLocked(http.StatusOK)
	}
	bw := w.s.bw
	if w.chunked {
		bw.WriteString("0\r\n")
		for _, k := range w.trailers {
			if httpguts.ValidHeaderFieldName(k) {
				for _, v := range w.hdr[k] {
					writeField(bw, k, v)
				}
			}
		}
		for k, vv := range w.hdr {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && httpguts.ValidHeaderFieldName(name) {
				for _, v := range vv {
					writeField(bw, name, v)
				}
			}
		}
		bw.WriteString("\r\n")
	} else if w.clen >= 0 && w.written < w.clen {
		// The handler wrote less than it declared: the client would
		// wait for the rest, so the connection must end.
		w.closeAfter = true
	}
	if err := bw.Flush(); err != nil {
		w.failed = true
	}
}

// Hijack hands the connection to the handler (WebSocket relay) after
// sending what is buffered; the returned reader keeps bytes the client
// sent after the request.
func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	s := w.s
	if err := s.bw.Flush(); err != nil {
		return nil, nil, err
	}
	s.disarm()
	s.conn.SetDeadline(time.Time{})
	w.hijacked = true
	return s.conn, bufio.NewReadWriter(s.br, bufio.NewWriter(s.conn)), nil
}

// reqBody is a request body on a Conn. Close never reads (a proxy
// must not pull a 100 MB upload just to close it); after the handler the
// server drains a little or ends the connection. The mutex lets the
// server wait for a reader goroutine (the upstream writer) still in Read.
type reqBody struct {
	s      *Conn
	rc     io.ReadCloser
	mu     sync.Mutex
	eof    bool
	closed atomic.Bool
}

func (b *reqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.eof {
		return 0, io.EOF
	}
	if b.s.w.expectContinue {
		b.s.w.writeContinue() // once; not after the final response began
	}
	b.s.extendRead()
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	} else if err != nil && isTimeoutErr(err) && !b.closed.Load() && !time.Now().Before(b.s.rd) {
		b.s.hooks.Stall(ClientSend)
	}
	return n, err
}

func (b *reqBody) Close() error {
	b.closed.Store(true)
	return nil
}

// abort ends the body after a handler panic: a reader still in Read (the
// upstream writer) is interrupted and waited for, so none touches the
// connection's buffers once the server closes it; nothing is drained.
func (b *reqBody) abort() {
	b.closed.Store(true)
	if !b.mu.TryLock() {
		b.s.conn.SetReadDeadline(aLongTimeAgo)
		b.mu.Lock()
	}
	b.mu.Unlock()
}

// finish ends the body after the handler and reports whether the
// connection can read another request: the body was read to its end, or
// what is left (at most maxDrain) arrives within the header timeout.
func (b *reqBody) finish() bool {
	b.closed.Store(true)
	if !b.mu.TryLock() {
		// A reader is still blocked on the client: interrupt it. The
		// body's framing state is unknown afterwards.
		b.s.conn.SetReadDeadline(aLongTimeAgo)
		b.mu.Lock()
		b.mu.Unlock()
		return false
	}
	defer b.mu.Unlock()
	if b.eof {
		return true
	}
	if b.s.hooks.Stalled() {
		return false // the client stopped sending: no drain wait
	}
	if w := &b.s.w; w.expectContinue && !w.wroteContinue {
		return false // the client was never asked for the body
	}
	b.s.setReadDeadline(time.Now().Add(b.s.srv.HeaderReadTimeout))
	n, err := io.CopyN(io.Discard, b.rc, maxDrain+1)
	return err == io.EOF && n <= maxDrain
}
