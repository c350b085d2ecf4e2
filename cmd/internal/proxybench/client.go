package proxybench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"
)

// load is one scenario's load: conns workers, each with one connection at a
// time, requests back to back.
type load struct {
	ns        *netNS
	dst       netip.AddrPort
	host      string // SNI and Host header
	roots     *x509.CertPool
	conns     int
	keepAlive bool
	bodyLen   int64
}

// loadResult is what the client saw.
type loadResult struct {
	Requests  int
	Errors    int
	FirstErr  string
	Elapsed   time.Duration
	Latencies []time.Duration // sorted
}

func (r loadResult) rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

func (r loadResult) pct(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(p * float64(len(r.Latencies)-1))
	return r.Latencies[i]
}

// run drives the load for d and returns what it measured. Latency is from
// the start of a request (including dial and TLS handshake for a new
// connection) to the last byte of its body.
func (l *load) run(ctx context.Context, d time.Duration) loadResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	end, _ := ctx.Deadline()
	tc := &tls.Config{
		ServerName: l.host,
		RootCAs:    l.roots,
		NextProtos: []string{"http/1.1"},
		// Same key exchange for every proxy: OpenSSL 3.0 (Squid) has no
		// hybrid post-quantum groups, Go would pick X25519MLKEM768.
		CurvePreferences: []tls.CurveID{tls.X25519},
		// No session cache: every new connection is a full handshake.
	}
	req := []byte("GET /bench/" + strconv.FormatInt(l.bodyLen, 10) + " HTTP/1.1\r\nHost: " + l.host + "\r\nUser-Agent: proxybench\r\nAccept: */*\r\n")
	if !l.keepAlive {
		req = append(req, "Connection: close\r\n"...)
	}
	req = append(req, "\r\n"...)

	type part struct {
		lat   []time.Duration
		errs  int
		first string
	}
	parts := make([]part, l.conns)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range parts {
		wg.Add(1)
		go func(p *part) {
			defer wg.Done()
			p.lat = make([]time.Duration, 0, 4096)
			w := &worker{l: l, tc: tc, req: req}
			defer w.close()
			for ctx.Err() == nil {
				t0 := time.Now()
				err := w.do(ctx)
				// The socket deadlines are the run's deadline, and the
				// poller can report them before the context's own timer
				// has marked ctx done: check the clock as well.
				if ctx.Err() != nil || !time.Now().Before(end) {
					return // cut off by the end of the run, not a failure
				}
				if err != nil {
					p.errs++
					if p.first == "" {
						p.first = err.Error()
					}
					w.close()
					time.Sleep(10 * time.Millisecond)
					continue
				}
				p.lat = append(p.lat, time.Since(t0))
			}
		}(&parts[i])
	}
	wg.Wait()
	res := loadResult{Elapsed: time.Since(start)}
	for _, p := range parts {
		res.Requests += len(p.lat)
		res.Errors += p.errs
		if res.FirstErr == "" {
			res.FirstErr = p.first
		}
		res.Latencies = append(res.Latencies, p.lat...)
	}
	slices.Sort(res.Latencies)
	return res
}

type worker struct {
	l   *load
	tc  *tls.Config
	req []byte
	c   *tls.Conn
	br  *bufio.Reader
}

func (w *worker) close() {
	if w.c != nil {
		w.c.Close()
		w.c = nil
	}
}

func (w *worker) do(ctx context.Context) error {
	if w.c == nil {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		raw, err := w.l.ns.dialTCP(dctx, w.l.dst)
		cancel()
		if err != nil {
			return err
		}
		c := tls.Client(raw, w.tc)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := c.HandshakeContext(ctx); err != nil {
			c.Close()
			return fmt.Errorf("tls handshake: %w", err)
		}
		w.c = c
		if w.br == nil {
			w.br = bufio.NewReaderSize(c, 16<<10)
		} else {
			w.br.Reset(c)
		}
	}
	_ = w.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := w.c.Write(w.req); err != nil {
		return fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(w.br, nil)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK || n != w.l.bodyLen {
		return fmt.Errorf("got status %d with %d body bytes, want 200 with %d", resp.StatusCode, n, w.l.bodyLen)
	}
	if !w.l.keepAlive || resp.Close {
		w.close()
	}
	return nil
}
