package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// record makes one TLS record header and payload of n random bytes.
func record(typ byte, ver uint16, n int) []byte {
	b := make([]byte, 5+n)
	b[0], b[1], b[2], b[3], b[4] = typ, byte(ver>>8), byte(ver), byte(n>>8), byte(n)
	rand.Read(b[5:])
	return b
}

// feed runs data through a framer in chunks of the given sizes the way
// copyIdle does (an incomplete header is held and completed by the next
// chunk) and returns what passed and the error.
func feed(data []byte, chunks []int) ([]byte, error) {
	var fr tlsFramer
	var out, held []byte
	for i := 0; len(data) > 0; i++ {
		k := min(chunks[i%len(chunks)], len(data))
		buf := append(held, data[:k]...)
		data = data[k:]
		pass, err := fr.scan(buf)
		out = append(out, buf[:pass]...)
		if err != nil {
			return out, err
		}
		held = append([]byte(nil), buf[pass:]...)
	}
	if len(held) > 0 {
		return out, errors.New("held bytes at end")
	}
	return out, nil
}

func TestTLSFramer(t *testing.T) {
	var good []byte
	good = append(good, record(22, 0x0301, 300)...)          // ClientHello record
	good = append(good, record(20, 0x0303, 1)...)            // change_cipher_spec
	good = append(good, record(23, 0x0303, maxRecordLen)...) // largest allowed
	good = append(good, record(23, 0x0303, 0)...)            // empty record
	good = append(good, record(21, 0x0302, 2)...)            // alert, TLS 1.1 version
	good = append(good, record(23, 0x0303, 1<<14+256)...)    // TLS 1.3 maximum
	for _, chunks := range [][]int{{1 << 20}, {1}, {2, 3}, {4, 1, 7}, {5}, {32 << 10}, {16389, 3}} {
		out, err := feed(good, chunks)
		if err != nil || !bytes.Equal(out, good) {
			t.Errorf("chunks %v: passed %d of %d bytes, %v", chunks, len(out), len(good), err)
		}
	}
	for _, tc := range []struct {
		name string
		hdr  []byte
	}{
		{"plain HTTP", []byte("GET / HTTP/1.1\r\n")},
		{"heartbeat", record(24, 0x0303, 3)},
		{"content type 19", record(19, 0x0303, 3)},
		{"SSL 3.0 version", record(23, 0x0300, 3)},
		{"version 0x0304", record(23, 0x0304, 3)},
		{"too long", record(23, 0x0303, maxRecordLen+1)[:5]},
		{"SSH banner", []byte("SSH-2.0-OpenSSH_9.2\r\n")},
	} {
		data := append(append([]byte(nil), good[:305]...), tc.hdr...)
		for _, chunks := range [][]int{{1 << 20}, {1}, {303, 3}} {
			out, err := feed(data, chunks)
			if !errors.Is(err, errNotTLS) {
				t.Errorf("%s, chunks %v: err %v, want not-tls", tc.name, chunks, err)
			}
			if !bytes.Equal(out, good[:305]) {
				t.Errorf("%s, chunks %v: passed %d bytes, want exactly the %d before the bad header", tc.name, chunks, len(out), 305)
			}
		}
	}
}

// rawUpstream is a TCP server standing in for a spliced destination: it
// keeps what it receives and runs serve on each connection.
type rawUpstream struct {
	l    net.Listener
	mu   sync.Mutex
	got  bytes.Buffer
	done chan struct{}
}

func newRawUpstream(t *testing.T, serve func(c net.Conn, u *rawUpstream)) *rawUpstream {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{l: l, done: make(chan struct{})}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer close(u.done)
		defer c.Close()
		serve(c, u)
	}()
	return u
}

func (u *rawUpstream) readAll(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		u.mu.Lock()
		u.got.Write(buf[:n])
		u.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (u *rawUpstream) received() []byte {
	<-u.done
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]byte(nil), u.got.Bytes()...)
}

// spliceHarness sends the TLS listener's splice dials to up.
func spliceHarness(t *testing.T, up *rawUpstream) *harness {
	return newHarnessOpts(t, harnessOpts{deps: func(h *harness, d *Deps) {
		d.DialUpstream = func(ctx context.Context, _ net.Conn, dst netip.AddrPort) (net.Conn, error) {
			h.dials.Add(1)
			var nd net.Dialer
			return nd.DialContext(ctx, "tcp", up.l.Addr().String())
		}
	}})
}

// writeSlowly writes b in pieces of the given sizes, pausing between them
// so that they arrive as separate reads.
func writeSlowly(c net.Conn, b []byte, sizes ...int) error {
	for i := 0; len(b) > 0; i++ {
		k := min(sizes[i%len(sizes)], len(b))
		if _, err := c.Write(b[:k]); err != nil {
			return err
		}
		b = b[k:]
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// TestSpliceNotTLSFromClient: a hostile client sends a valid hello naming
// a spliced host, then plain HTTP. The upstream receives the hello and
// nothing of the rest; the connection is closed; the record says not-tls
// and which side sent it.
func TestSpliceNotTLSFromClient(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "splice.test"})
	up := newRawUpstream(t, func(c net.Conn, u *rawUpstream) { u.readAll(c) })
	h := spliceHarness(t, up)
	c, err := net.Dial("tcp", h.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(hello)
	time.Sleep(50 * time.Millisecond) // a separate read
	c.Write([]byte("POST /exfil HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecret"))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if b, err := io.ReadAll(c); len(b) != 0 {
		t.Errorf("client got %q %v", b, err)
	}
	got := up.received()
	if !bytes.Equal(got, hello) {
		t.Errorf("upstream received %d bytes (%q...), want exactly the %d-byte hello", len(got), got[min(len(got), len(hello)):], len(hello))
	}
	r := h.rec.wait(t, "not-tls record", field("rule", "not-tls"))
	if r["action"] != "deny" || r["sni"] != "splice.test" || !strings.Contains(r["upstream_error"].(string), "client sent not-tls") ||
		!strings.Contains(r["upstream_error"].(string), "splice-bank") {
		t.Errorf("record %v", r)
	}
}

// TestSpliceNotTLSFromUpstream: the destination answers a valid hello with
// something that is not TLS (an HTTP error, as a plain web server on 443
// would): the client receives none of it.
func TestSpliceNotTLSFromUpstream(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "splice.test"})
	up := newRawUpstream(t, func(c net.Conn, u *rawUpstream) {
		buf := make([]byte, len(hello))
		io.ReadFull(c, buf)
		c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
		u.readAll(c)
	})
	h := spliceHarness(t, up)
	c, err := net.Dial("tcp", h.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(hello)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if b, err := io.ReadAll(c); len(b) != 0 {
		t.Errorf("client got %q %v", b, err)
	}
	r := h.rec.wait(t, "not-tls record", field("rule", "not-tls"))
	if r["action"] != "deny" || !strings.Contains(r["upstream_error"].(string), "upstream sent not-tls") || r["bytes_out"] != float64(0) {
		t.Errorf("record %v", r)
	}
}

// TestSpliceTLSFramingPasses: well-formed records pass both ways byte for
// byte however they are cut into reads: headers split across reads
// (1-byte and 3-byte writes), records of the maximum length, empty
// records; the record says splice.
func TestSpliceTLSFramingPasses(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "splice.test"})
	var fromClient, fromServer []byte
	fromClient = append(fromClient, record(20, 0x0303, 1)...)
	fromClient = append(fromClient, record(23, 0x0303, maxRecordLen)...)
	fromClient = append(fromClient, record(23, 0x0303, 0)...)
	fromClient = append(fromClient, record(23, 0x0303, 100)...)
	fromServer = append(fromServer, record(22, 0x0303, 90)...)
	fromServer = append(fromServer, record(23, 0x0303, maxRecordLen)...)
	fromServer = append(fromServer, record(21, 0x0303, 2)...)
	want := append(append([]byte(nil), hello...), fromClient...)
	up := newRawUpstream(t, func(c net.Conn, u *rawUpstream) {
		buf := make([]byte, len(hello))
		io.ReadFull(c, buf)
		// Headers cut 3+2, payloads in 1000-byte pieces.
		writeSlowly(c, fromServer, 3, 2, 1000)
		c.(*net.TCPConn).CloseWrite()
		u.mu.Lock()
		u.got.Write(buf)
		u.mu.Unlock()
		u.readAll(c)
	})
	h := spliceHarness(t, up)
	c, err := net.Dial("tcp", h.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(hello)
	if err := writeSlowly(c, fromClient, 1, 1, 1, 1, 1, 4000); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(b, fromServer) {
		t.Errorf("client got %d bytes (%v), want the server's %d", len(b), err, len(fromServer))
	}
	if got := up.received(); !bytes.Equal(got, want) {
		t.Errorf("upstream got %d bytes, want %d", len(got), len(want))
	}
	r := h.rec.wait(t, "splice record", field("sni", "splice.test"))
	if r["action"] != "splice" || r["rule"] != "splice-bank" || r["upstream_error"] != "" ||
		r["bytes_in"] != float64(len(want)) || r["bytes_out"] != float64(len(fromServer)) {
		t.Errorf("record %v", r)
	}
}

// BenchmarkTLSFramerScan: the cost of the record-header check per 32 KiB
// read of a splice carrying 16 KiB application-data records (what copyIdle
// adds per read; the payload is not touched).
func BenchmarkTLSFramerScan(b *testing.B) {
	var stream []byte
	for len(stream) < 1<<20 {
		stream = append(stream, record(23, 0x0303, 1<<14+22)...)
	}
	b.SetBytes(32 << 10)
	b.ReportAllocs()
	var fr tlsFramer
	off := 0
	for b.Loop() {
		if off+32<<10 > len(stream) {
			off, fr = 0, tlsFramer{}
		}
		pass, err := fr.scan(stream[off : off+32<<10])
		if err != nil {
			b.Fatal(err)
		}
		off += pass
	}
}

// FuzzTLSFramer: however a byte stream is cut into reads, the framer
// passes the same prefix and stops at the same place as when it sees the
// stream whole, never passes a malformed header, and never panics.
func FuzzTLSFramer(f *testing.F) {
	f.Add(append(record(22, 0x0301, 40), record(23, 0x0303, 7)...), uint8(1))
	f.Add(append(record(23, 0x0303, 3), []byte("GET / HTTP/1.1\r\n")...), uint8(3))
	f.Add(record(23, 0x0303, maxRecordLen), uint8(200))
	f.Add([]byte{23, 3, 3, 0x48, 1}, uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, cut uint8) {
		whole, werr := feed(data, []int{len(data) + 1})
		chunked, cerr := feed(data, []int{int(cut%16) + 1, int(cut/16) + 1})
		if !bytes.Equal(whole, chunked) || (werr == nil) != (cerr == nil) {
			t.Fatalf("whole: %d bytes, %v; chunked by %d: %d bytes, %v", len(whole), werr, cut, len(chunked), cerr)
		}
		// Every header in what passed is valid.
		var fr tlsFramer
		if pass, err := fr.scan(whole); err != nil || pass != len(whole) && len(whole)-pass >= 5 {
			t.Fatalf("passed bytes do not re-scan: %d of %d, %v", pass, len(whole), err)
		}
	})
}
