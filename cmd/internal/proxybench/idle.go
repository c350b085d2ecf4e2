package proxybench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Idle is the scenario that holds IdleConns bumped keep-alive connections
// open after one request each and reports the proxy's resident memory per
// connection.
const Idle = "idle"

// IdleRow is one proxy in the idle scenario. RSS is the sum of VmRSS over
// the proxy's process tree (Squid's certificate helpers included), read
// from /proc after the connections settled; per-connection figures are
// the growth over the idle proxy divided by the connections held.
type IdleRow struct {
	Proxy     string `json:"proxy"`
	Conns     int    `json:"conns"`  // connections asked for
	Held      int    `json:"held"`   // connections open and served at the measurement
	Errors    int    `json:"errors"` // connections that failed to open or to answer
	FirstErr  string `json:"first_error,omitempty"`
	RSSBefore int64  `json:"rss_before"` // bytes, after warm-up, no client connection
	RSSHeld   int64  `json:"rss_held"`   // bytes, with Held idle connections
	RSSAfter  int64  `json:"rss_after"`  // bytes, after the clients closed
	FDsBefore int    `json:"fds_before"`
	FDsHeld   int    `json:"fds_held"`
	Threads   int    `json:"threads_held"`
	HTTP2     bool   `json:"http2"` // the clients spoke HTTP/2
}

// PerConn is the resident memory growth per held connection, in bytes.
func (r IdleRow) PerConn() float64 {
	if r.Held == 0 {
		return 0
	}
	return float64(r.RSSHeld-r.RSSBefore) / float64(r.Held)
}

// FDsPerConn is the descriptor growth per held connection.
func (r IdleRow) FDsPerConn() float64 {
	if r.Held == 0 {
		return 0
	}
	return float64(r.FDsHeld-r.FDsBefore) / float64(r.Held)
}

// idleSettle is how long the held connections sit before the reading:
// both proxies finish their per-request work and go idle (gwlbproxy
// returns a burst's garbage to the kernel after 2 s without work; without
// that, its runtime would keep it until its two-minute forced collection).
const idleSettle = 5 * time.Second

// runIdle opens l.conns connections through the proxy p (at most 64
// handshakes at a time), sends one keep-alive request on each, reads the
// answer, and holds them all open while it reads p's RSS.
func runIdle(ctx context.Context, name string, l *load, n int, p *proc, h2 bool) IdleRow {
	row := IdleRow{Proxy: name, Conns: n, HTTP2: h2}
	row.RSSBefore, row.FDsBefore, _ = treeMem(p.pid())
	tc := &tls.Config{ServerName: l.host, RootCAs: l.roots, NextProtos: []string{"http/1.1"}, CurvePreferences: []tls.CurveID{tls.X25519}}
	if h2 {
		tc.NextProtos = []string{"h2"}
	}
	req := []byte("GET /bench HTTP/1.1\r\nHost: " + l.host + "\r\nUser-Agent: proxybench\r\nAccept: */*\r\n\r\n")
	var (
		mu    sync.Mutex
		conns []*tls.Conn
		wg    sync.WaitGroup
		sem   = make(chan struct{}, 64)
	)
	for range n {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := idleOne(ctx, l, tc, req, h2)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				row.Errors++
				if row.FirstErr == "" {
					row.FirstErr = err.Error()
				}
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	select {
	case <-ctx.Done():
	case <-time.After(idleSettle):
	}
	// Count only connections the proxy still holds open: a read that
	// times out at once means open and quiet.
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil && isTimeout(err) {
			row.Held++
		}
	}
	row.RSSHeld, row.FDsHeld, row.Threads = treeMem(p.pid())
	for _, c := range conns {
		c.Close()
	}
	select {
	case <-ctx.Done():
	case <-time.After(idleSettle):
	}
	row.RSSAfter, _, _ = treeMem(p.pid())
	return row
}

func isTimeout(err error) bool {
	t, ok := err.(interface{ Timeout() bool })
	return ok && t.Timeout()
}

// idleOne opens one bumped connection, completes one request on it and
// returns it open.
func idleOne(ctx context.Context, l *load, tc *tls.Config, req []byte, h2 bool) (*tls.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	raw, err := l.ns.dialTCP(dctx, l.dst)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, tc)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.HandshakeContext(dctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	if h2 {
		if err := idleH2(c, l); err != nil {
			c.Close()
			return nil, err
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, fmt.Errorf("write request: %w", err)
	}
	// No bufio.Reader kept per connection: the response is read through
	// a small one that goes away, the client's own memory stays small.
	br := bufio.NewReaderSize(c, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read response: %w", err)
	}
	nb, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || nb != l.bodyLen || br.Buffered() > 0 {
		c.Close()
		return nil, fmt.Errorf("response: status %d, %d body bytes, err %v", resp.StatusCode, nb, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// idleH2 sends one GET as an HTTP/2 client with a bare framer (no
// client goroutines; the connection then sits idle like a browser's
// between requests) and reads the response to its end.
func idleH2(c *tls.Conn, l *load) error {
	if c.ConnectionState().NegotiatedProtocol != "h2" {
		return fmt.Errorf("ALPN %q, want h2", c.ConnectionState().NegotiatedProtocol)
	}
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		return err
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", l.host}, {":path", "/bench"}, {"user-agent", "proxybench"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		return err
	}
	var status string
	var body int64
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("h2 response: %w", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := fr.WriteSettingsAck(); err != nil {
					return err
				}
			}
		case *http2.MetaHeadersFrame:
			status = f.PseudoValue("status")
			if f.StreamEnded() {
				return fmt.Errorf("h2 response: status %s without a body", status)
			}
		case *http2.DataFrame:
			body += int64(len(f.Data()))
			if f.StreamEnded() {
				if status != "200" || body != l.bodyLen {
					return fmt.Errorf("h2 response: status %s, %d body bytes", status, body)
				}
				return nil
			}
		case *http2.GoAwayFrame, *http2.RSTStreamFrame:
			return fmt.Errorf("h2 response: %v", f)
		}
	}
}

// treeMem sums VmRSS (bytes), open descriptors and threads over pid's
// process tree.
func treeMem(pid int) (rss int64, fds, threads int) {
	for _, q := range tree(pid) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(q) + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			switch f[0] {
			case "VmRSS:":
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				rss += kb << 10
			case "Threads:":
				t, _ := strconv.Atoi(f[1])
				threads += t
			}
		}
		ents, _ := os.ReadDir("/proc/" + strconv.Itoa(q) + "/fd")
		fds += len(ents)
	}
	return rss, fds, threads
}

// idleScenario runs the idle scenario against p and appends its row.
func idleScenario(ctx context.Context, cfg Config, res *Result, name string, ns *netNS, dst netip.AddrPort, roots *x509.CertPool, p *proc, h2 bool) error {
	l := &load{ns: ns, dst: dst, host: cfg.Host, roots: roots, conns: 1, keepAlive: true, bodyLen: int64(cfg.BodySize)}
	// Warm-up: leaf minted, pools and buffers in use once.
	if w := l.run(ctx, 500*time.Millisecond); w.Requests == 0 {
		return fmt.Errorf("%s idle: warm-up completed no request: %s", name, w.FirstErr)
	}
	time.Sleep(500 * time.Millisecond)
	cfg.Log.Info("measuring", "proxy", name, "scenario", Idle, "conns", cfg.IdleConns)
	row := runIdle(ctx, name, l, cfg.IdleConns, p, h2)
	res.Idle = append(res.Idle, row)
	if p.exited() {
		return fmt.Errorf("%s exited during the idle run: %v", name, p.exitErr())
	}
	return ctx.Err()
}

// writeIdle prints the idle rows and the gwlbproxy/Squid ratio.
func (r *Result) writeIdle(w io.Writer) {
	if len(r.Idle) == 0 {
		return
	}
	fmt.Fprintf(w, "\nidle bumped keep-alive connections (one request each, then held %v; RSS of the proxy's process tree)\n", idleSettle)
	fmt.Fprintf(w, "%-12s %6s %6s %7s %10s %10s %10s %10s %9s %8s\n",
		"proxy", "asked", "held", "errors", "RSS idle", "RSS held", "RSS after", "per conn", "fds/conn", "threads")
	for _, x := range r.Idle {
		name := x.Proxy
		if x.HTTP2 {
			name += "/h2"
		}
		fmt.Fprintf(w, "%-12s %6d %6d %7d %9.1fM %9.1fM %9.1fM %8.1fKB %9.2f %8d\n",
			name, x.Conns, x.Held, x.Errors, mb(x.RSSBefore), mb(x.RSSHeld), mb(x.RSSAfter), x.PerConn()/1024, x.FDsPerConn(), x.Threads)
		if x.FirstErr != "" {
			fmt.Fprintf(w, "first error, %s idle: %s\n", x.Proxy, x.FirstErr)
		}
	}
	var g, q *IdleRow
	for i := range r.Idle {
		switch r.Idle[i].Proxy {
		case "gwlbproxy":
			g = &r.Idle[i]
		case "squid":
			q = &r.Idle[i]
		}
	}
	if g != nil && g.Held > 0 {
		verdict := "met"
		if g.PerConn() > 60*1024 {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "gwlbproxy %.1f KB per idle bumped connection (target <= 60 KB: %s)", g.PerConn()/1024, verdict)
		if q != nil && q.Held > 0 && g.PerConn() > 0 {
			fmt.Fprintf(w, "; squid %.1f KB, %.2fx gwlbproxy's", q.PerConn()/1024, q.PerConn()/g.PerConn())
		}
		fmt.Fprintln(w)
	}
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }
