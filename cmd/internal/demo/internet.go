package demo

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
)

// Names of the demo's internet. They resolve through Names only (no DNS).
const (
	HostApp     = "app.demo.test"     // allowed: bumped over HTTPS, plain over HTTP
	HostBank    = "bank.demo.test"    // spliced: TLS passes through undecrypted
	HostBlocked = "blocked.demo.test" // denied by a rule: 403 page
	HostExpired = "expired.demo.test" // allowed, but its certificate expired: 502 page
	HostEcho    = "echo.demo.test"    // UDP echo (port 7) and ping target
)

// InternetCAName is the subject of the internet's own test CA.
const InternetCAName = "demo internet CA"

// Internet addresses, all in 203.0.113.0/24 (TEST-NET-3).
var (
	AddrApp     = netip.MustParseAddr("203.0.113.20")
	AddrBank    = netip.MustParseAddr("203.0.113.21")
	AddrBlocked = netip.MustParseAddr("203.0.113.22")
	AddrExpired = netip.MustParseAddr("203.0.113.23")
	AddrEcho    = netip.MustParseAddr("203.0.113.30")
	// AddrIMDS is the instance metadata address. A decoy server answers on
	// it in the internet, so a leak through the appliance would be seen.
	AddrIMDS = netip.MustParseAddr("169.254.169.254")
)

// EchoPort is the UDP echo port on every internet address. UDP 443 is
// echoed too, so a QUIC packet that were not dropped would be answered.
const EchoPort = 7

// Names maps every demo name to its address.
var Names = map[string]netip.Addr{
	HostApp:     AddrApp,
	HostBank:    AddrBank,
	HostBlocked: AddrBlocked,
	HostExpired: AddrExpired,
	HostEcho:    AddrEcho,
}

// internetAddrs are put on the internet's interfaces.
var internetAddrs = []netip.Addr{AddrApp, AddrBank, AddrBlocked, AddrExpired, AddrEcho}

// LeakBody is what the decoy metadata server answers; a client that ever
// reads it has reached 169.254.169.254 through the appliance.
const LeakBody = "LEAK: instance metadata reached"

// Internet is the demo's internet: its own CA, certificates for the demo
// names and the servers it runs in one or more namespaces.
type Internet struct {
	CAPEM  []byte
	CACert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	good   *tls.Certificate // every demo name, valid
	bad    *tls.Certificate // expired.demo.test, expired yesterday

	mu      sync.Mutex
	closers []io.Closer
	// accepted counts TCP connections accepted per local address.
	accepted sync.Map // netip.Addr -> *atomic.Int64
	observe  atomic.Pointer[func(*http.Request)]
}

// Accepted is how many TCP connections (ports 80 and 443) the servers
// accepted on address a: a test's proof that nothing reached a server.
func (in *Internet) Accepted(a netip.Addr) int64 {
	if v, ok := in.accepted.Load(a); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

// countingListener counts accepted connections by local address.
type countingListener struct {
	net.Listener
	in *Internet
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		if a, ok := addrOf(c.LocalAddr()); ok {
			v, _ := l.in.accepted.LoadOrStore(a, new(atomic.Int64))
			v.(*atomic.Int64).Add(1)
		}
	}
	return c, err
}

// Observe has f told of every HTTP request the internet's servers receive,
// before it is answered (nil: stop). Tests use it to prove a request
// arrived, with what it carried. f must not block.
func (in *Internet) Observe(f func(*http.Request)) {
	if f == nil {
		in.observe.Store(nil)
		return
	}
	in.observe.Store(&f)
}

// NewInternet makes the internet's CA and certificates.
func NewInternet() (*Internet, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: InternetCAName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	in := &Internet{CACert: cert, caKey: key, CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	if in.good, err = in.leaf(2, []string{HostApp, HostBank, HostBlocked, HostEcho}, now.Add(-time.Hour), now.Add(12*time.Hour)); err != nil {
		return nil, err
	}
	if in.bad, err = in.leaf(3, []string{HostExpired}, now.Add(-48*time.Hour), now.Add(-24*time.Hour)); err != nil {
		return nil, err
	}
	return in, nil
}

func (in *Internet) leaf(serial int64, names []string, from, to time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    from,
		NotAfter:     to,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, in.CACert, &key.PublicKey, in.caKey)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// Serve starts the internet's servers in ns, on every address: HTTP on 80,
// HTTPS on 443 (certificate by SNI), UDP echo on 7 and 443. The servers
// run until Close.
func (in *Internet) Serve(ns *inns.NS, name string) error {
	tcfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if strings.EqualFold(h.ServerName, HostExpired) {
				return in.bad, nil
			}
			return in.good, nil
		},
	}
	// UDP is bound per address: a wildcard socket would answer from the
	// address of the outgoing route, which no NAT or flow table matches.
	var (
		tcp [2]net.Listener
		udp []net.PacketConn
	)
	err := ns.Do(func() error {
		var err error
		for i, port := range []int{80, 443} {
			if tcp[i], err = net.Listen("tcp4", "0.0.0.0:"+strconv.Itoa(port)); err != nil {
				return err
			}
		}
		for _, a := range internetAddrs {
			for _, port := range []int{EchoPort, 443} {
				c, err := net.ListenPacket("udp4", netip.AddrPortFrom(a, uint16(port)).String())
				if err != nil {
					return err
				}
				udp = append(udp, c)
			}
		}
		return nil
	})
	if err != nil {
		for _, l := range tcp {
			if l != nil {
				l.Close()
			}
		}
		for _, c := range udp {
			c.Close()
		}
		return fmt.Errorf("internet servers in %s: %w", name, err)
	}
	h := http.HandlerFunc(in.handle)
	for i, l := range tcp {
		l = countingListener{Listener: l, in: in}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: discardLog()}
		if i == 1 {
			srv.TLSConfig = tcfg
			l = tls.NewListener(l, tcfg)
		}
		go func() { _ = srv.Serve(l) }()
		in.track(srv)
	}
	for _, c := range udp {
		go echo(c)
		in.track(c)
	}
	return nil
}

func (in *Internet) track(c io.Closer) {
	in.mu.Lock()
	in.closers = append(in.closers, c)
	in.mu.Unlock()
}

// Close stops every server.
func (in *Internet) Close() error {
	in.mu.Lock()
	cs := in.closers
	in.closers = nil
	in.mu.Unlock()
	var errs []error
	for _, c := range cs {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// handle answers every demo name. Paths:
//
//	/            a greeting naming the server and the peer it saw
//	/bytes?n=N   N bytes of a deterministic pattern (PatternByte); with
//	             &rate=R at most R bytes per second (a slow download)
//	/slow?s=S    one line every 100ms for S seconds
func (in *Internet) handle(w http.ResponseWriter, r *http.Request) {
	if f := in.observe.Load(); f != nil {
		(*f)(r)
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if lip, ok := addrOf(local); ok && lip == AddrIMDS {
		fmt.Fprintln(w, LeakBody)
		return
	}
	switch r.URL.Path {
	case "/bytes":
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > 1<<31 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		rate, _ := strconv.ParseInt(r.URL.Query().Get("rate"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		buf := make([]byte, 32<<10)
		start := time.Now()
		for off := int64(0); off < n; {
			if rate > 0 {
				// Pace: byte off is due at start + off/rate.
				due := start.Add(time.Duration(float64(off) / float64(rate) * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					select {
					case <-r.Context().Done():
						return
					case <-time.After(d):
					}
				}
			}
			k := min(int64(len(buf)), n-off)
			for i := range k {
				buf[i] = PatternByte(off + i)
			}
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			off += k
		}
	case "/slow":
		s, _ := strconv.Atoi(r.URL.Query().Get("s"))
		fl, _ := w.(http.Flusher)
		for i := range s * 10 {
			if _, err := fmt.Fprintf(w, "tick %d\n", i); err != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	default:
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		fmt.Fprintf(w, "hello from %s over %s (server %s); you came from %s\n", r.Host, scheme, local, r.RemoteAddr)
	}
}

// PatternByte is byte off of every /bytes answer.
func PatternByte(off int64) byte { return byte(off*7 + off>>11) }

func echo(c net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = c.WriteTo(buf[:n], from)
	}
}

func addrOf(a net.Addr) (netip.Addr, bool) {
	if a == nil {
		return netip.Addr{}, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}
