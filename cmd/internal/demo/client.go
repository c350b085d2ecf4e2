package demo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
)

// Client makes requests from inside one namespace.
type Client struct {
	// Name says where the client is, for output ("VPC A").
	Name string
	NS   *inns.NS
	// Roots are the CAs the client trusts (the appliance CA, and the
	// internet CA as a browser trusts public roots).
	Roots *x509.CertPool
}

// Dial connects from the client's namespace. Demo names resolve through
// Names; anything else must be an address.
func (c *Client) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if a, ok := Names[strings.ToLower(host)]; ok {
		addr = net.JoinHostPort(a.String(), port)
	} else if _, err := netip.ParseAddr(host); err != nil {
		return nil, fmt.Errorf("%s: not a demo name (no DNS here)", host)
	}
	var conn net.Conn
	err = c.NS.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// HTTPClient returns an http.Client dialling from the namespace, trusting
// Roots. keepAlive false opens a new connection per request.
func (c *Client) HTTPClient(keepAlive bool) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           c.Dial,
			TLSClientConfig:       &tls.Config{RootCAs: c.Roots},
			DisableKeepAlives:     !keepAlive,
			TLSHandshakeTimeout:   30 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			MaxIdleConnsPerHost:   16,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Result is what one HTTP(S) request saw.
type Result struct {
	URL        string
	Status     int
	Body       string // at most 64 KiB
	Local      netip.AddrPort
	Remote     netip.AddrPort // the server as the client dialled it (the proxy keeps it)
	Issuer     string         // issuer CN of the leaf the client was shown
	Subject    string
	TLSVersion string
	Err        error
}

// Get fetches url with a fresh connection.
func (c *Client) Get(ctx context.Context, url string) Result {
	return c.get(ctx, c.HTTPClient(false), url, "")
}

// GetHost is Get with the Host header set to host (a client naming one
// server while connecting to the URL's address).
func (c *Client) GetHost(ctx context.Context, url, host string) Result {
	return c.get(ctx, c.HTTPClient(false), url, host)
}

func (c *Client) get(ctx context.Context, hc *http.Client, url, host string) Result {
	res := Result{URL: url}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if ap, err := netip.ParseAddrPort(info.Conn.LocalAddr().String()); err == nil {
			res.Local = ap
		}
		if ap, err := netip.ParseAddrPort(info.Conn.RemoteAddr().String()); err == nil {
			res.Remote = ap
		}
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, url, nil)
	if err != nil {
		res.Err = err
		return res
	}
	req.Header.Set("User-Agent", "gwlbproxy-demo/1")
	if host != "" {
		req.Host = host
	}
	resp, err := hc.Do(req)
	if err != nil {
		res.Err = err
		return res
	}
	defer resp.Body.Close()
	res.Status = resp.StatusCode
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		res.Issuer = resp.TLS.PeerCertificates[0].Issuer.CommonName
		res.Subject = resp.TLS.PeerCertificates[0].Subject.CommonName
		res.TLSVersion = tls.VersionName(resp.TLS.Version)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	res.Body = string(b)
	if err != nil {
		res.Err = err
	}
	return res
}

// Ping sends one ICMP echo request to dst from the client's namespace and
// waits for the matching reply.
func (c *Client) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	var pc *icmp.PacketConn
	err := c.NS.Do(func() error {
		var err error
		pc, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("icmp socket: %w", err)
	}
	defer pc.Close()
	id, seq := rand.IntN(0xffff), 1
	payload := []byte("gwlbproxy demo ping")
	for {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: payload}}
		b, err := msg.Marshal(nil)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if _, err := pc.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return 0, err
		}
		// Retry once a second: the first packet of a new tunnel may wait
		// for its interfaces, but is not lost; a lost reply is.
		deadline := start.Add(time.Second)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = pc.SetReadDeadline(deadline)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return 0, err
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq && from.String() == dst.String() {
				return time.Since(start), nil
			}
		}
		if expired(ctx) {
			return 0, fmt.Errorf("no echo reply from %s: %w", dst, context.DeadlineExceeded)
		}
		seq++
	}
}

// UDP sends msg to dst and returns the first answer, retrying every wait
// until ctx ends. A context error means no answer ever came.
func (c *Client) UDP(ctx context.Context, dst netip.AddrPort, msg []byte, wait time.Duration) ([]byte, error) {
	var conn *net.UDPConn
	err := c.NS.Do(func() error {
		var err error
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	buf := make([]byte, 2048)
	for {
		if _, err := conn.Write(msg); err != nil {
			return nil, err
		}
		deadline := time.Now().Add(wait)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = conn.SetReadDeadline(deadline)
		n, err := conn.Read(buf)
		if err == nil {
			return buf[:n], nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return nil, err
		}
		if expired(ctx) {
			return nil, context.DeadlineExceeded
		}
	}
}

// Roots builds a pool from PEM files.
func Roots(files ...string) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if !p.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%s: no PEM certificate", f)
		}
	}
	return p, nil
}

// expired reports whether ctx is done or its deadline has passed (the
// context's own timer may fire a little later).
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}
