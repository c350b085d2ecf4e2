package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// syncBuf is a goroutine-safe log sink.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

var errTestSpoolFull = errors.New("test: spool full (fail_closed)")

// TestAdmitFailsClosed: while Admit refuses, new connections (plain and
// TLS) are reset before any byte is read, counted, not recorded, and the
// proxy's health is red; connections already open keep working; one log
// line per transition. When Admit admits again, new connections work.
func TestAdmitFailsClosed(t *testing.T) {
	var refuse atomic.Bool
	logs := &syncBuf{}
	h := newHarnessOpts(t, harnessOpts{
		logger: slog.New(slog.NewTextHandler(logs, nil)),
		deps: func(_ *harness, d *Deps) {
			d.Admit = func() error {
				if refuse.Load() {
					return errTestSpoolFull
				}
				return nil
			}
		},
	})
	// A raw keep-alive connection, so that "the same connection" is certain.
	kept, err := net.Dial("tcp", h.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	keptR := bufio.NewReader(kept)
	get := func(host string) {
		t.Helper()
		kept.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(kept, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		resp, err := http.ReadResponse(keptR, nil)
		if err != nil {
			t.Fatalf("GET %s on the kept connection: %v", host, err)
		}
		if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, upstreamMarker) {
			t.Fatalf("GET %s on the kept connection: %d %q", host, resp.StatusCode, body)
		}
	}
	get("before.good.test")
	if err := h.p.Health(); err != nil {
		t.Fatalf("healthy proxy reports %v", err)
	}

	refuse.Store(true)
	if err := h.p.Health(); !errors.Is(err, errTestSpoolFull) {
		t.Fatalf("health while refusing: %v", err)
	}
	h.rec.mu.Lock()
	nrec := len(h.rec.recs)
	h.rec.mu.Unlock()
	for i, addr := range []string{h.httpAddr, h.tlsAddr, h.httpAddr} {
		c, err := net.Dial("tcp", addr)
		if errors.Is(err, syscall.ECONNRESET) {
			continue // on loopback the reset can beat connect's completion
		}
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		// A client that sends first still gets nothing but a reset/EOF.
		c.Write([]byte("GET / HTTP/1.1\r\nHost: refused.good.test\r\n\r\n"))
		n, err := io.ReadFull(c, make([]byte, 1))
		c.Close()
		if n != 0 || err == nil || isTimeout(err) {
			t.Fatalf("refused connection %d: read %d bytes, err %v", i, n, err)
		}
	}
	// Connections accepted before keep being served.
	get("during.good.test")
	h.rec.wait(t, "request on kept connection", field("host", "during.good.test"))
	s := h.p.Stats()
	if s.Refused != 3 || !s.Refusing {
		t.Fatalf("stats refused %d refusing %v", s.Refused, s.Refusing)
	}
	var m dto.Metric
	if err := h.p.m.refused.Write(&m); err != nil || m.GetCounter().GetValue() != 3 {
		t.Fatalf("refused metric %v (%v)", m.GetCounter().GetValue(), err)
	}
	if n := logs.count("refusing new connections"); n != 1 {
		t.Fatalf("%d 'refusing' log lines for 3 refused connections, want 1", n)
	}
	h.rec.mu.Lock()
	for _, r := range h.rec.recs[nrec:] {
		if r["host"] != "during.good.test" {
			t.Errorf("refused connection was recorded: %v", r)
		}
	}
	h.rec.mu.Unlock()
	if s.Accepted != 1 {
		t.Fatalf("accepted %d: refused connections must not be accepted", s.Accepted)
	}

	refuse.Store(false)
	if resp, _ := mustGet(t, h.httpsClient(false), "https://after.good.test/"); resp.StatusCode != 200 {
		t.Fatalf("after recovery: %d", resp.StatusCode)
	}
	mustGet(t, h.httpClient(false), "http://after.good.test/")
	if n := logs.count("accepting connections again"); n != 1 {
		t.Fatalf("%d recovery log lines, want 1", n)
	}
	if s := h.p.Stats(); s.Refused != 3 || s.Refusing || h.p.Health() != nil {
		t.Fatalf("after recovery: %+v health %v", s, h.p.Health())
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
