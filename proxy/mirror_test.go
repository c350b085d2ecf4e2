package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/mirror"
	"github.com/gwlbproxy/gwlbproxy/proxy/mirror/mirrortest"
)

type frameLog struct {
	mu     sync.Mutex
	frames [][]byte
}

func (l *frameLog) write(b []byte) error {
	l.mu.Lock()
	l.frames = append(l.frames, append([]byte(nil), b...))
	l.mu.Unlock()
	return nil
}

// TestMirrorCleartext: with the decryption mirror on, a plain HTTP and a
// bumped HTTPS (HTTP/1.1) connection each come out as one TCP connection
// with the client's address and port and the original destination, whose
// two directions reassemble to exactly the cleartext request and response
// the client exchanged; a spliced connection and a bumped HTTP/2 one are not
// mirrored.
func TestMirrorCleartext(t *testing.T) {
	log := &frameLog{}
	m, err := mirror.NewWriter(mirror.DefaultConfig(), log.write)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessOpts(t, harnessOpts{deps: func(_ *harness, d *Deps) { d.Mirror = m }})

	// Plain HTTP.
	resp, body := mustGet(t, h.httpClient(false), "http://good.test/plain-mirror")
	if resp.StatusCode != 200 {
		t.Fatalf("plain: %d", resp.StatusCode)
	}
	// Bumped HTTPS over HTTP/1.1, raw so that we know every byte sent.
	conn, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "good.test", RootCAs: h.clientCA, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	bumpReq := "GET /bump-mirror HTTP/1.1\r\nHost: good.test\r\nUser-Agent: mirror-test\r\nConnection: close\r\n\r\n"
	io.WriteString(conn, bumpReq)
	bumpResp, _ := io.ReadAll(conn)
	conn.Close()
	if !bytes.Contains(bumpResp, []byte(upstreamMarker)) {
		t.Fatalf("bump response %q", bumpResp)
	}
	// Spliced: never decrypted, never mirrored.
	sc, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "splice.test", RootCAs: h.upCA.pool()})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(sc, "GET /s HTTP/1.1\r\nHost: splice.test\r\nConnection: close\r\n\r\n")
	io.ReadAll(sc)
	sc.Close()
	// Bumped HTTP/2: not mirrored (documented).
	h2c, err := tls.Dial("tcp", h.tlsAddr, &tls.Config{ServerName: "good.test", RootCAs: h.clientCA, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := h2c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	io.WriteString(h2c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	h2c.Close()
	h.rec.wait(t, "splice record", field("action", "splice"))
	h.rec.wait(t, "bump record", field("user_agent", "mirror-test"))
	h.p.Shutdown(t.Context())
	m.Close()

	byClient, servers, err := mirrortest.Split(log.frames)
	if err != nil {
		t.Fatal(err)
	}
	if len(byClient) != 2 {
		t.Fatalf("%d mirrored connections, want 2 (plain and bumped)", len(byClient))
	}
	var sawPlain, sawBump bool
	for cl, frames := range byClient {
		c, err := mirrortest.Reassemble(frames, cl, servers[cl], 1500)
		if err != nil {
			t.Fatal(err)
		}
		if c.End != "fin" {
			t.Errorf("%v: ended %q", cl, c.End)
		}
		if !cl.Addr().Is4() || !cl.Addr().IsLoopback() {
			t.Errorf("client address %v, want the real client's", cl)
		}
		switch servers[cl] {
		case testDstHTTP:
			sawPlain = true
			if !strings.HasPrefix(string(c.ToServer), "GET /plain-mirror HTTP/1.1\r\n") || !bytes.Contains(c.ToClient, []byte(body)) {
				t.Errorf("plain: mirrored %q / %q", c.ToServer, c.ToClient)
			}
		case testDstTLS:
			sawBump = true
			if string(c.ToServer) != bumpReq || !bytes.Equal(c.ToClient, bumpResp) {
				t.Errorf("bump: mirrored %q / %q, want %q / %q", c.ToServer, c.ToClient, bumpReq, bumpResp)
			}
		default:
			t.Errorf("mirrored connection to %v", servers[cl])
		}
	}
	if !sawPlain || !sawBump {
		t.Fatalf("plain %v bump %v", sawPlain, sawBump)
	}
	if st := m.Stats(); st.Streams != 2 || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}
}
