package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Hello is what the front end learns from a ClientHello before deciding.
type Hello struct {
	// ServerName is the SNI exactly as sent (not normalized).
	ServerName string
	// ALPN lists the protocols the client offers.
	ALPN []string
	// ECH is set when the hello carries encrypted_client_hello (0xfe0d):
	// ServerName is then only the public outer name.
	ECH bool
	// MaxVersion is the highest TLS version the client offers.
	MaxVersion uint16
}

const extECH = 0xfe0d

// maxHelloBytes bounds what is buffered while peeking: a ClientHello is one
// handshake message of at most 2^24 bytes in theory, but real ones (with
// post-quantum key shares) stay well under 16 KiB.
const maxHelloBytes = 64 << 10

var errHelloDone = errors.New("client hello captured")

// ErrNotTLS is wrapped when the first bytes are not a TLS handshake.
var ErrNotTLS = errors.New("not a TLS client hello")

// ReadClientHello reads one ClientHello from r using crypto/tls itself (no
// hand-written parser): a tls.Server runs over a conn that records what it
// reads and refuses to write, and GetConfigForClient captures the parsed
// hello and aborts. crypto/tls reassembles a hello split across TCP segments
// and across TLS records. It returns every byte consumed so the caller can
// replay them to the real TLS server or to a spliced upstream.
func ReadClientHello(r io.Reader) (*Hello, []byte, error) {
	rc := &recordingConn{r: r}
	var h *Hello
	cfg := &tls.Config{
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			h = &Hello{ServerName: chi.ServerName, ALPN: append([]string(nil), chi.SupportedProtos...)}
			for _, v := range chi.SupportedVersions {
				if v > h.MaxVersion && v <= tls.VersionTLS13 {
					h.MaxVersion = v
				}
			}
			for _, e := range chi.Extensions {
				if e == extECH {
					h.ECH = true
				}
			}
			return nil, errHelloDone
		},
	}
	err := tls.Server(rc, cfg).Handshake()
	if h != nil {
		return h, rc.buf, nil
	}
	if err == nil {
		err = errors.New("handshake ended without a client hello")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, errHelloTooBig) {
		return nil, rc.buf, fmt.Errorf("read client hello: %w", err)
	}
	// Anything else crypto/tls rejected: not a TLS record, SSLv2, a
	// malformed or unsupported hello.
	return nil, rc.buf, fmt.Errorf("read client hello: %w: %v", ErrNotTLS, err)
}

var errHelloTooBig = errors.New("client hello larger than 64 KiB")

// recordingConn is a read-only net.Conn that keeps every byte read.
type recordingConn struct {
	r   io.Reader
	buf []byte
}

func (c *recordingConn) Read(p []byte) (int, error) {
	if len(c.buf) >= maxHelloBytes {
		return 0, errHelloTooBig
	}
	if room := maxHelloBytes - len(c.buf); len(p) > room {
		p = p[:room]
	}
	n, err := c.r.Read(p)
	c.buf = append(c.buf, p[:n]...)
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error)      { return 0, errors.New("peek: read only") }
func (c *recordingConn) Close() error                     { return nil }
func (c *recordingConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *recordingConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *recordingConn) SetDeadline(time.Time) error      { return nil }
func (c *recordingConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordingConn) SetWriteDeadline(time.Time) error { return nil }

// replayConn serves prefix before reading from Conn: the bytes consumed by
// the peek are handed to the real TLS server or the spliced upstream.
type replayConn struct {
	net.Conn
	prefix []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil // do not keep the hello's buffer for the connection's life
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes when the underlying conn can.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
