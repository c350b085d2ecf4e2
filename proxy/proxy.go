// Package proxy is the transparent inspecting proxy: it takes listeners that
// receive TPROXY'd connections (their LocalAddr is the original
// destination), peeks TLS ClientHellos, applies policy, and bumps, splices or
// denies. Decrypted and plain HTTP/1.x is served by the HTTP/1 engine in
// proxy/internal/h1 (h1.Server: net/http's parser and limits, without its
// per-request goroutine and deadline work; wired in h1.go), HTTP/2 (when
// the client offers h2) by x/net/http2 with the same timeouts and limits.
// Both hand every request to handle (policy, SSRF guard, binding), which
// passes allowed ones to goproxy's ServeHTTP; goproxy runs its one
// OnRequest hook (newGoproxy), which installs our RoundTripper, and copies
// the response back. Our RoundTripper sends requests to the original
// destination, never to a re-resolved Host, from pools keyed by
// destination ip:port + SNI. Upstream TLS offers h2 when http2 is on
// (shared mode): one verified, multiplexed
// connection then serves many clients; upgrade requests (WebSocket) and
// upstreams without h2 use HTTP/1.1, as does plain HTTP. Where a pool is
// HTTP/1.1 only (http2 off, or plain HTTP), requests other than upgrades
// and Expect: 100-continue go through h1.Pool (proxy/internal/h1), which
// does the exchange on the handler's goroutine instead of http.Transport's
// two goroutines per connection.
//
// Upstream connections are dialed through Deps.DialUpstream with the client
// connection. In one-arm (steer egress_mode tunnel) they carry the client's
// own address and port, so a client connection can have only one upstream
// connection at a time and it serves no one else: with
// Deps.UpstreamPerClient each client connection has its own one-connection
// transport (the pre-verified connection serves its first request; a second
// request waits for the first to finish), closed with the client
// connection, and bumped clients are offered HTTP/1.1 only, because h2
// streams would queue behind each other on that one connection while
// HTTP/1.1 browsers open parallel connections, each with its own upstream.
//
// Deps.Admit gates every new connection (fail closed when the log spool is
// full): refused connections are reset before anything else happens.
//
// Fair share (fairshare.go): every client address may hold at most
// max_conns_per_client of the max_conns slots (max_conns itself sized from
// memory by default); a connection over either limit gets a 503 page or a
// clean close and a rate-limited record. A client that stops sending a
// request body or reading a response for progress_timeout loses its
// connection (HTTP/2: its stream), recorded with the side that stalled.
// An idle bumped HTTP/1 connection holds its goroutine, socket and TLS
// state but no bufio buffers, and in per-client mode no upstream
// goroutines; after a burst the proxy returns the garbage to the kernel
// once quiet.
//
// Decisions, in order, for a TLS connection:
//  1. read the ClientHello (deadline client_hello_timeout); not TLS or
//     silent: close and record;
//  2. SSRF guard on the original destination (always on; never
//     report-only);
//  3. ECH present: policy.ech_action (default ignore: the outer SNI is
//     decided like any other, and a bump completes the handshake on the
//     ClientHelloOuter as a server without ECH keys); no SNI:
//     policy.no_sni_action; unparseable SNI: deny;
//  4. the ordered rules on (endpoint, client, destination, SNI);
//  5. destination binding (binding.go): an allow or splice decided on a
//     name needs the destination among the name's addresses, else deny
//     (bind:dst-mismatch, bind:resolve-failed). Every request's Host is
//     checked the same way (rules, then binding) inside the connection.
//
// Allow (bump) dials and verifies the upstream first (unless the same
// destination+SNI verified within verified_ttl), then mints the client leaf.
// When upstream verification fails, the client still gets a leaf so it can
// be shown a 502 page saying so, but no upstream byte ever flows through that
// connection. Deny with deny_tls=page likewise completes the handshake to show
// a 403 page naming the rule.
package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/internal/h1"
	"github.com/gwlbproxy/gwlbproxy/proxy/mirror"
)

// CertSource mints (or returns cached) leaf certificates for bumped
// connections. ca.Minter implements it. serverName is normalized (lower
// case, punycode) and may be empty, in which case ip is the only name.
type CertSource interface {
	Certificate(ctx context.Context, serverName string, ip netip.Addr) (*tls.Certificate, error)
}

// Deps are the proxy's collaborators. Only Recorder is required; CertSource
// is required to bump (without it allow acts as deny for TLS).
type Deps struct {
	Certs    CertSource
	Recorder Recorder
	// EndpointOf returns the GWLB endpoint a connection arrived through
	// (tunnel/steer). Nil: no endpoint.
	EndpointOf func(net.Conn) (uint64, bool)
	// DialUpstream connects to dst on behalf of the accepted client
	// connection client (tunnel/steer's DialUpstream: in nat mode a plain
	// dial, in tunnel mode bound to the client's own ip:port). client is
	// the raw accepted connection. Nil: a net.Dialer to dst.
	//
	// In shared mode (UpstreamPerClient false) client is the connection
	// whose request caused the dial; the upstream connection is then pooled
	// by (destination, SNI) and may serve other clients' requests later.
	DialUpstream func(ctx context.Context, client net.Conn, dst netip.AddrPort) (net.Conn, error)
	// UpstreamPerClient says DialUpstream binds the client's address and
	// port (steer egress_mode tunnel), so every upstream connection of one
	// client connection has the same 5-tuple: at most one can exist at a
	// time and it can serve no other client. Then each client connection
	// gets its own upstream transport limited to one connection (the
	// pre-verified one serves the first request), closed with the client
	// connection; bumped clients are offered HTTP/1.1 only and upstreams
	// are spoken to in HTTP/1.1 (see the package doc);
	// splices are one connection per client anyway.
	UpstreamPerClient bool
	// Admit is asked before anything else is done with every new client
	// connection; a non-nil error closes the connection at once (RST) and
	// counts it (Stats.Refused). The app passes the log shipper's
	// "spool full under fail_closed" state, so that records that cannot be
	// kept stop traffic instead of being lost. Nil: always admit.
	Admit func() error
	// OriginalDst returns a connection's original destination. Nil: the
	// accepted conn's LocalAddr, which is what TPROXY gives. Tests map
	// loopback listeners to TEST-NET addresses and route them back with
	// DialUpstream, so the SSRF guard sees a realistic destination.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// SelfAddrs lists the appliance's own addresses for the SSRF guard.
	// Nil: net.InterfaceAddrs.
	SelfAddrs func() ([]netip.Addr, error)
	// InstanceID goes into every record. Empty: the host name.
	InstanceID string
	// Binder checks destination binding. Nil: a resolve.Resolver built
	// from Config.Binding (none when binding.mode is off).
	Binder Binder
	// Memory is the memory max_conns is sized from or checked against,
	// in bytes (SizeMaxConns). 0: the cgroup limit or MemTotal.
	Memory uint64
	// Mirror, when set, receives the cleartext of plain HTTP and bumped
	// HTTP/1.x connections (the decryption mirror). Nil: nothing mirrored,
	// at no cost.
	Mirror *mirror.Mirror
}

// Proxy is the inspecting proxy. Create with New.
type Proxy struct {
	cfg   Config
	deps  Deps
	log   *slog.Logger
	ids   *recordIDs
	gp    *goproxy.ProxyHttpServer
	h1    *h1.Server // HTTP/1.x of plain and bumped connections (h1.go)
	srv   *http.Server
	h2    *http2.Server
	up    *upstream
	sem   chan struct{}
	m     *metrics
	stats counters
	reg   prometheus.Registerer
	// cur is the policy in force (reload.go); reloadMu serializes Reload.
	cur      atomic.Pointer[policyState]
	reloadMu sync.Mutex

	maxConns int           // max_conns resolved (SizeMaxConns)
	clients  *clientCounts // connections per client address
	refusals refusalLog    // rate limit of refused-connection records
	refusers chan struct{} // bounds the goroutines answering refused connections

	mu        sync.Mutex
	listeners map[net.Listener]string
	listenErr error
	closing   atomic.Bool
	refusing  atomic.Bool    // Deps.Admit said no to the last connection
	conns     sync.WaitGroup // every accepted connection, until its state finishes
	stop      context.CancelFunc
	ctx       context.Context
	active    map[*connState]struct{}
}

// New validates cfg and builds a proxy. reg may be nil.
func New(cfg Config, deps Deps, log *slog.Logger, reg prometheus.Registerer) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	mem := deps.Memory
	if mem == 0 {
		mem = InstanceMemory()
	}
	maxConns, err := SizeMaxConns(cfg.MaxConns, mem)
	if err != nil {
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	if deps.Recorder == nil {
		return nil, errors.New("proxy: Deps.Recorder is required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if deps.DialUpstream == nil {
		d := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
		deps.DialUpstream = func(ctx context.Context, _ net.Conn, dst netip.AddrPort) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", dst.String())
		}
	}
	if deps.OriginalDst == nil {
		deps.OriginalDst = localAddrDst
	}
	if deps.InstanceID == "" {
		deps.InstanceID, _ = os.Hostname()
	}
	ids, err := newRecordIDs()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		cfg: cfg, deps: deps, log: log, ids: ids, reg: reg,
		sem:       make(chan struct{}, maxConns),
		maxConns:  maxConns,
		clients:   newClientCounts(perClientCap(cfg.MaxConnsPerClient, maxConns)),
		refusers:  make(chan struct{}, maxRefusers),
		listeners: map[net.Listener]string{},
		active:    map[*connState]struct{}{},
		ctx:       ctx, stop: cancel,
	}
	p.m = newMetrics(reg, p)
	ps, err := p.buildPolicy(cfg, "", nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	p.cur.Store(ps)
	p.up = newUpstream(p)
	p.gp = p.newGoproxy()
	p.h1 = p.newH1Server()
	p.srv = &http.Server{
		Handler:           http.HandlerFunc(p.handle),
		ReadHeaderTimeout: cfg.HeaderReadTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*servedConn); ok {
				return context.WithValue(ctx, stateKey{}, sc.st)
			}
			return ctx
		},
	}
	p.h2 = &http2.Server{
		MaxConcurrentStreams:         cfg.HTTP2MaxStreams,
		MaxReadFrameSize:             1 << 20,
		IdleTimeout:                  cfg.IdleTimeout,
		MaxUploadBufferPerConnection: 1 << 20,
		MaxUploadBufferPerStream:     1 << 20,
		// A client that stops reading (no byte written for this long)
		// loses its connection; streams have their own deadlines.
		WriteByteTimeout: cfg.ProgressTimeout,
		CountError:       func(errType string) { p.log.Debug("proxy: http2 error", "type", errType) },
	}
	if err := http2.ConfigureServer(p.srv, p.h2); err != nil {
		cancel()
		return nil, fmt.Errorf("proxy http2: %w", err)
	}
	// p.srv serves no listener: HTTP/1.x is served by p.h1, h2 by
	// p.h2.ServeConn with p.srv as its base config; p.srv.Shutdown
	// sends those h2 connections GOAWAY.
	go p.refreshSelf(ctx)
	go p.up.sweepIdle(ctx)
	go p.trimWhenQuiet(ctx, defaultTrim, debug.FreeOSMemory)
	return p, nil
}

// warnECH says at start what a strict ech_action does to browsers:
// Chromium, Edge and Firefox put a (GREASE) encrypted_client_hello in
// every ClientHello, which no one can tell from real ECH.
func warnECH(log *slog.Logger, action string) {
	switch action {
	case "deny":
		log.Warn("proxy: policy.ech_action is deny: every HTTPS connection of Chromium, Edge and Firefox carries an encrypted_client_hello extension (GREASE when the site has no ECH) and will be denied; use ech_action: ignore to decide on the outer SNI")
	case "splice":
		log.Warn("proxy: policy.ech_action is splice: every HTTPS connection of Chromium, Edge and Firefox carries an encrypted_client_hello extension and will pass uninspected, whatever the rules say")
	case "allow":
		log.Warn("proxy: policy.ech_action is allow: every HTTPS connection of Chromium, Edge and Firefox carries an encrypted_client_hello extension and will be bumped whatever the rules say about its SNI (requests inside are still checked)")
	}
}

func localAddrDst(c net.Conn) (netip.AddrPort, error) {
	if ta, ok := c.LocalAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	ap, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return ap, nil
}

func loadRoots(bundle string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if bundle == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(bundle)
	if err != nil {
		return nil, fmt.Errorf("upstream_ca_bundle: %w", err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("upstream_ca_bundle: %s: no PEM certificates", bundle)
	}
	return pool, nil
}

// CheckDestination returns a non-empty reason when the proxy's SSRF guard
// refuses a (the same check the proxy makes before it dials). The
// composition root hands it to tunnel/steer (UseCheck), so the steering
// dialer refuses the same list, with the own addresses the proxy refreshes.
func (p *Proxy) CheckDestination(a netip.Addr) string { return p.ps().guard.Check(a) }

func (p *Proxy) refreshSelf(ctx context.Context) {
	t := time.NewTicker(p.cfg.SSRF.SelfRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := p.ps().guard.Refresh(); err != nil {
				p.log.Warn("ssrf: refreshing own addresses", "err", err)
			}
		}
	}
}

// ServeHTTP serves plain HTTP on l (transparent port 80 style) until l fails
// or Shutdown. It returns nil after Shutdown.
func (p *Proxy) ServeHTTP(l net.Listener) error { return p.serve(l, false) }

// ServeTLS serves TLS on l (transparent port 443 style): peek, decide, bump,
// splice or deny. It returns nil after Shutdown.
func (p *Proxy) ServeTLS(l net.Listener) error { return p.serve(l, true) }

func (p *Proxy) serve(l net.Listener, isTLS bool) error {
	mode := "http"
	if isTLS {
		mode = "tls"
	}
	p.mu.Lock()
	if p.closing.Load() {
		p.mu.Unlock()
		l.Close()
		return nil
	}
	p.listeners[l] = mode
	p.mu.Unlock()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if p.closing.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTemporary(err)) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			p.mu.Lock()
			delete(p.listeners, l)
			p.listenErr = fmt.Errorf("%s listener %s: %w", mode, l.Addr(), err)
			p.mu.Unlock()
			p.log.Error("proxy listener failed", "mode", mode, "addr", l.Addr().String(), "err", err)
			return p.listenErr
		}
		delay = 0
		if !p.admit(c) {
			continue
		}
		ep := p.endpointOf(c)
		client := clientKey{ep.id, remoteAddr(c)}
		if !p.clients.acquire(client) {
			p.refuse(c, isTLS, ep, refusedPerClient)
			continue
		}
		select {
		case p.sem <- struct{}{}:
		default:
			p.clients.release(client)
			p.refuse(c, isTLS, ep, refusedTotal)
			continue
		}
		p.conns.Add(1)
		go p.handleConn(c, isTLS, ep)
	}
}

// admit asks Deps.Admit about a new connection. Refused connections are
// reset at once and counted, without a record (the record sink is what is
// refusing); the switch between admitting and refusing is logged once each
// way, not per connection.
func (p *Proxy) admit(c net.Conn) bool {
	if p.deps.Admit == nil {
		return true
	}
	err := p.deps.Admit()
	if err == nil {
		if p.refusing.CompareAndSwap(true, false) {
			p.log.Info("proxy: accepting connections again", "refused", p.stats.refused.Load())
		}
		return true
	}
	if p.refusing.CompareAndSwap(false, true) {
		p.log.Error("proxy: refusing new connections", "err", err)
	}
	p.stats.refused.Add(1)
	p.m.refused.Inc()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0) // RST: the client fails fast instead of waiting
	}
	c.Close()
	return false
}

// errTemporary maps EMFILE-like accept errors (which the kernel reports on
// fd exhaustion) to themselves so serve backs off instead of failing.
func errTemporary(err error) error {
	if t, ok := err.(interface{ Temporary() bool }); ok && t.Temporary() {
		return err
	}
	return errNever
}

var errNever = errors.New("never")

// Shutdown stops accepting, lets in-flight requests finish until ctx is done,
// then closes everything.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.closing.Store(true)
	p.h1.BeginShutdown()
	p.mu.Lock()
	for l := range p.listeners {
		l.Close()
	}
	p.listeners = map[net.Listener]string{}
	for st := range p.active {
		if s := st.h1.Load(); s != nil {
			s.WakeIfIdle()
		}
	}
	p.mu.Unlock()
	err := p.srv.Shutdown(ctx)
	done := make(chan struct{})
	go func() { p.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		// Force the remaining splices and handshakes closed.
		p.mu.Lock()
		for st := range p.active {
			st.client.Close()
		}
		p.mu.Unlock()
		p.srv.Close()
		<-done
		if err == nil {
			err = ctx.Err()
		}
	}
	p.stop()
	p.up.closeIdle()
	return err
}

// Health is nil while no listener has failed, Deps.Admit admits and
// Shutdown was not called.
func (p *Proxy) Health() error {
	if p.closing.Load() {
		return errors.New("proxy: shut down")
	}
	if p.deps.Admit != nil {
		if err := p.deps.Admit(); err != nil {
			return fmt.Errorf("proxy: refusing new connections: %w", err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.listenErr != nil {
		return p.listenErr
	}
	return nil
}

// Stats is a JSON-able snapshot of counters.
type Stats struct {
	Listeners     int    `json:"listeners"`
	ActiveConns   int    `json:"active_conns"`
	Accepted      uint64 `json:"accepted"`
	Limited       uint64 `json:"limited"`
	Bumped        uint64 `json:"bumped"`
	Spliced       uint64 `json:"spliced"`
	Denied        uint64 `json:"denied"`
	HelloFailures uint64 `json:"hello_failures"`
	Requests      uint64 `json:"requests"`
	UpstreamErrs  uint64 `json:"upstream_errors"`
	ShipFailures  uint64 `json:"ship_failures"`
	UpstreamPools int    `json:"upstream_pools"`
	// Refused counts connections Deps.Admit refused; Refusing is true
	// while the last one was refused.
	Refused  uint64 `json:"refused"`
	Refusing bool   `json:"refusing"`
	// UpstreamPerClient is Deps.UpstreamPerClient (upstream_pools is then
	// 0: every client connection has its own upstream).
	UpstreamPerClient bool `json:"upstream_per_client"`

	// Saturation (fair share). Saturation is active_conns/max_conns;
	// ClientLimited counts connections refused at max_conns_per_client
	// (Limited those refused at max_conns); Clients is how many client
	// addresses have connections and TopClientConns the most any one
	// holds; RefusalRecordsDropped counts refusals left unrecorded by the
	// record rate limit. None of these affects the health verdict: a
	// saturated proxy still serves, and GWLB must not fail it over.
	MaxConns              int     `json:"max_conns"`
	MaxConnsPerClient     int     `json:"max_conns_per_client"`
	Saturation            float64 `json:"saturation"`
	ClientLimited         uint64  `json:"client_limited"`
	Clients               int     `json:"clients"`
	TopClientConns        int     `json:"top_client_conns"`
	RefusalRecordsDropped uint64  `json:"refusal_records_dropped"`
	Stalled               uint64  `json:"stalled"`
}

type counters struct {
	accepted, limited, bumped, spliced, denied, helloFail, requests, upErrs, shipFail, refused atomic.Uint64
	clientLimited, stalled                                                                     atomic.Uint64
}

// Stats returns current counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	nl, na := len(p.listeners), len(p.active)
	p.mu.Unlock()
	clients, top := p.clients.top()
	return Stats{
		MaxConns: p.maxConns, MaxConnsPerClient: p.clients.limit,
		Saturation: float64(na) / float64(p.maxConns), ClientLimited: p.stats.clientLimited.Load(),
		Clients: clients, TopClientConns: top, RefusalRecordsDropped: p.refusals.total.Load(),
		Stalled:   p.stats.stalled.Load(),
		Listeners: nl, ActiveConns: na,
		Accepted: p.stats.accepted.Load(), Limited: p.stats.limited.Load(),
		Bumped: p.stats.bumped.Load(), Spliced: p.stats.spliced.Load(), Denied: p.stats.denied.Load(),
		HelloFailures: p.stats.helloFail.Load(), Requests: p.stats.requests.Load(),
		UpstreamErrs: p.stats.upErrs.Load(), ShipFailures: p.stats.shipFail.Load(),
		UpstreamPools: p.up.size(),
		Refused:       p.stats.refused.Load(), Refusing: p.refusing.Load(),
		UpstreamPerClient: p.deps.UpstreamPerClient,
	}
}
