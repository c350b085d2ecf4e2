package proxybench

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/ca"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/mirror"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/schema"
)

// ServerReady is the line the proxy server prints on stdout once its
// transparent listener accepts connections.
const ServerReady = "proxybench: ready"

// ServerMain is the hidden `gwlbproxy bench proxy-server` child: the real
// proxy (proxy.New, a ca.Minter over the bench CA, an IP_TRANSPARENT
// listener whose accepted connections carry the original destination as
// LocalAddr) and nothing else of the appliance. Records go to a file, one
// JSON object per line through a 64 KiB buffer, as Squid's access.log
// does. It serves until ctx is done, then shuts down and flushes.
func ServerMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gwlbproxy bench proxy-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:3443", "transparent TLS listener address")
	caCert := fs.String("ca-cert", "", "bump CA certificate (PEM)")
	caKey := fs.String("ca-key", "", "bump CA key (PEM)")
	upCA := fs.String("upstream-ca", "", "PEM bundle trusted for upstream servers")
	records := fs.String("records", "", "file the records are appended to (empty: discarded)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	mirrorDev := fs.String("mirror", "", "turn the decryption mirror on into this tap device (issue 19)")
	bindMode := fs.String("binding", proxy.BindEnforce, "proxy.binding.mode: enforce, report_only or off")
	dnsServer := fs.String("dns", "", "DNS server (ip:port) destination binding asks; empty: /etc/resolv.conf")
	h2 := fs.Bool("http2", false, "offer h2 to clients (the appliance default; off so that gwlbproxy and Squid both speak HTTP/1.1)")
	perClient := fs.Bool("upstream-per-client", false, "dial every upstream connection from the client's own address and port (IP_TRANSPARENT), one per client connection, as steer's egress_mode tunnel does")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	config.Default().Runtime.Apply() // the appliance's runtime tuning, as `gwlbproxy run` applies it

	auth, err := ca.LoadFiles(*caCert, *caKey)
	if err != nil {
		return err
	}
	minter := ca.NewMinter(auth, ca.MinterOptions{Logger: log}, nil)

	cfg := proxy.DefaultConfig()
	cfg.Policy.DefaultAction = policy.Allow
	cfg.Policy.NoSNIAction = "allow"
	cfg.UpstreamCABundle = *upCA
	cfg.HTTP2 = *h2 // off by default: the load client and Squid speak HTTP/1.1 only
	// Every bench connection comes from the one client address.
	cfg.MaxConnsPerClient = 1 << 22
	cfg.Binding.Mode = *bindMode
	if *dnsServer != "" {
		cfg.Binding.Resolver.Servers = []string{*dnsServer}
	}

	var rec proxy.Recorder = discard{}
	var fr *fileRecorder
	if *records != "" {
		if fr, err = newFileRecorder(*records); err != nil {
			return err
		}
		rec = fr
	}
	var mir *mirror.Mirror
	if *mirrorDev != "" {
		mc := mirror.DefaultConfig()
		mc.Enabled, mc.Interface = true, *mirrorDev
		if mir, err = mirror.Open(mc); err != nil {
			return err
		}
		defer mir.Close()
	}
	deps := proxy.Deps{Certs: minter, Recorder: rec, InstanceID: "proxybench", Mirror: mir}
	if *perClient {
		deps.UpstreamPerClient = true
		deps.DialUpstream = dialAsClient
	}
	px, err := proxy.New(cfg, deps, log, nil)
	if err != nil {
		return err
	}
	lc := net.ListenConfig{Control: transparent}
	l, err := lc.Listen(ctx, "tcp4", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	served := make(chan error, 1)
	go func() { served <- px.ServeTLS(l) }()
	fmt.Fprintln(stdout, ServerReady)

	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	serr := px.Shutdown(sctx)
	if errors.Is(serr, context.DeadlineExceeded) {
		serr = nil // forced close of idle keep-alive conns is fine here
	}
	if fr != nil {
		serr = errors.Join(serr, fr.Close())
	}
	return serr
}

// transparent sets IP_TRANSPARENT (and SO_REUSEADDR) on the listener so
// TPROXY may hand it connections addressed to anywhere.
func transparent(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_TRANSPARENT, 1)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("IP_TRANSPARENT: %w", serr)
	}
	return nil
}

// dialAsClient connects to dst from the client's own address and port
// (IP_TRANSPARENT; the router's "socket transparent" rule delivers the
// answers to this socket), the way steer dials in egress_mode tunnel.
func dialAsClient(ctx context.Context, client net.Conn, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: client.RemoteAddr(), Control: transparent}
	return d.DialContext(ctx, "tcp4", dst.String())
}

type discard struct{}

func (discard) ShipRequest(time.Time, []byte, schema.Metrics) error { return nil }

// fileRecorder appends one record per line through a buffer, the way a
// stdio access log does.
type fileRecorder struct {
	mu sync.Mutex
	f  *os.File
	w  *bufio.Writer
}

func newFileRecorder(path string) (*fileRecorder, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("records: %w", err)
	}
	return &fileRecorder{f: f, w: bufio.NewWriterSize(f, 64<<10)}, nil
}

// ShipRequest implements proxy.Recorder.
func (r *fileRecorder) ShipRequest(_ time.Time, record []byte, _ schema.Metrics) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.w.Write(record); err != nil {
		return err
	}
	return r.w.WriteByte('\n')
}

func (r *fileRecorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return errors.Join(r.w.Flush(), r.f.Close())
}
