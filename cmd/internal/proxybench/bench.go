package proxybench

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/ca"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/nsexec"
	"github.com/gwlbproxy/gwlbproxy/proxy/resolve/dnstest"
)

// Config configures Run. DefaultConfig fills every field.
type Config struct {
	// Conns is the number of concurrent client connections.
	Conns int
	// Duration of each measured scenario; Warmup runs before each.
	Duration, Warmup time.Duration
	// BodySize is the upstream response body in bytes.
	BodySize int
	// Host is the name the client asks for (SNI and Host header).
	Host string
	// ServerCommand starts the gwlbproxy proxy server (ServerMain) when its
	// flags are appended: normally the gwlbproxy binary with "bench",
	// "proxy-server". It runs in the router namespace through nsexec.
	ServerCommand []string
	// Squid and Certgen are Squid's binaries. Squid "" skips Squid.
	Squid, Certgen string
	// Baseline adds the no-proxy rows.
	Baseline bool
	// ProxyCPU is the core each proxy is pinned to; the client and the
	// upstream (this process) are pinned to ClientCPU.
	ProxyCPU, ClientCPU int
	// Profile, when set, is a file gwlbproxy writes a CPU profile of its
	// whole run to (pprof format).
	Profile string
	// Dir keeps the run's files (CA, configs, logs) there; "" uses a
	// temporary directory removed at the end.
	Dir string
	// Scenario limits the run to NewConn, KeepAlive or Idle; "" runs
	// NewConn and KeepAlive.
	Scenario string
	// CompareBinding also runs gwlbproxy with destination binding off
	// (row BindOffRow) beside the default (binding on, row "gwlbproxy"),
	// to show what binding costs on the cache-hit path.
	CompareBinding bool
	// IdleConns is how many connections the Idle scenario holds open.
	IdleConns int
	// UpstreamPerClient runs gwlbproxy with one upstream connection per
	// client connection, dialed from the client's address and port (steer
	// egress_mode tunnel); Squid is unchanged (it dials from its own).
	UpstreamPerClient bool
	// IdleHTTP2 makes the idle scenario's clients speak HTTP/2 to
	// gwlbproxy (as browsers do); Squid is then skipped (no HTTP/2).
	IdleHTTP2 bool
	// Rounds repeats the whole sequence (no proxy, gwlbproxy, Squid) so
	// the proxies take turns and slow drifts of a shared machine hit both;
	// each row aggregates its rounds (sums, merged latencies).
	Rounds int
	// BodySizes, when set, runs every scenario once per body size (rows
	// named "<scenario>/<size>") instead of with BodySize only.
	BodySizes []int
	// Mirror adds a second gwlbproxy run per round with the decryption
	// mirror on (proxy row MirrorRow): the mirror's tap device in the
	// router namespace, nothing capturing it (the kernel's receive path
	// drops the frames), so the figures are the proxy's own cost.
	Mirror bool
	// Log receives progress; nil discards.
	Log *slog.Logger
}

// DefaultConfig returns the defaults: 16 connections, 10 s per scenario
// after 2 s of warm-up, 1 KiB responses, Squid from squid-openssl.
func DefaultConfig() Config {
	return Config{
		Conns: 16, Duration: 10 * time.Second, Warmup: 2 * time.Second, BodySize: 1024,
		Host: "bench.test", Squid: DefaultSquid, Certgen: DefaultCertgen, Baseline: true,
		ProxyCPU: 1, ClientCPU: 0, Rounds: 1, CompareBinding: true, IdleConns: 5000,
	}
}

// BindOffRow is the row of gwlbproxy with proxy.binding.mode off.
const BindOffRow = "gw-bindoff"

// MirrorRow is the row of gwlbproxy with the decryption mirror on.
const MirrorRow = "gwlbproxy+m"

// dnsTTL is the TTL the bench's DNS server gives Host: longer than any
// run, so binding is measured on its cache-hit path.
const dnsTTL = 3600

// Scenario names.
const (
	NewConn   = "new-conn"
	KeepAlive = "keep-alive"
)

// Row is one proxy in one scenario.
type Row struct {
	Proxy     string        `json:"proxy"` // "none", "gwlbproxy", "squid"
	Scenario  string        `json:"scenario"`
	Rounds    int           `json:"rounds"`
	Requests  int           `json:"requests"`
	Errors    int           `json:"errors"`
	FirstErr  string        `json:"first_error,omitempty"`
	Elapsed   time.Duration `json:"elapsed"`
	RPS       float64       `json:"requests_per_second"`
	P50       time.Duration `json:"p50"`
	P99       time.Duration `json:"p99"`
	ProxyCPU  time.Duration `json:"proxy_cpu"`  // user+system of the proxy's processes
	ClientCPU time.Duration `json:"client_cpu"` // client + upstream (this process)
}

// PerCPUSecond is requests per CPU-second of the proxy (0 without a proxy).
func (r Row) PerCPUSecond() float64 {
	if r.ProxyCPU <= 0 {
		return 0
	}
	return float64(r.Requests) / r.ProxyCPU.Seconds()
}

// Result is a whole run.
type Result struct {
	Config Config
	Rows   []Row
	// LogLines counts the lines each proxy wrote to its request log
	// (gwlbproxy records, Squid access.log) over the run, warm-up included;
	// Sent counts the requests the client completed through it.
	LogLines, Sent map[string]int
	// Idle has the idle scenario's rows (one per proxy and round).
	Idle []IdleRow
	// LoadAvg is /proc/loadavg's 1-minute figure at the start and the end:
	// on a shared machine other work skews the figures.
	LoadAvg [2]string
}

// Find returns the row for proxy and scenario.
func (r *Result) Find(proxyName, scenario string) (Row, bool) {
	for _, x := range r.Rows {
		if x.Proxy == proxyName && x.Scenario == scenario {
			return x, true
		}
	}
	return Row{}, false
}

// Run builds the namespaces, runs every scenario against no proxy,
// gwlbproxy and Squid in turn, and tears everything down.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	res = Result{Config: cfg, LogLines: map[string]int{}, Sent: map[string]int{}}
	res.LoadAvg[0] = loadAvg()
	defer func() { res.LoadAvg[1] = loadAvg() }()
	if os.Geteuid() != 0 {
		return res, errors.New("needs root: it creates network namespaces, nftables rules and policy routes")
	}
	if cfg.Rounds < 1 {
		cfg.Rounds = 1
	}
	if cfg.Conns < 1 || cfg.Duration <= 0 || cfg.Warmup < 0 || cfg.BodySize < 0 {
		return res, fmt.Errorf("conns, duration, warm-up or body size out of range")
	}
	if len(cfg.ServerCommand) == 0 {
		return res, errors.New("no command for the gwlbproxy proxy server")
	}
	if cfg.Squid != "" {
		for _, f := range []string{cfg.Squid, cfg.Certgen} {
			if _, err := os.Stat(f); err != nil {
				return res, fmt.Errorf("%s missing (install Squid with ssl-bump: apt-get install -y squid-openssl), or run without Squid: %w", f, err)
			}
		}
	}
	if cfg.Scenario != "" && cfg.Scenario != NewConn && cfg.Scenario != KeepAlive && cfg.Scenario != Idle {
		return res, fmt.Errorf("scenario %q is not %s, %s or %s", cfg.Scenario, NewConn, KeepAlive, Idle)
	}
	if cfg.Scenario == Idle && cfg.IdleConns < 1 {
		return res, fmt.Errorf("idle connections %d out of range", cfg.IdleConns)
	}
	if cfg.IdleHTTP2 {
		if cfg.Scenario != Idle {
			return res, errors.New("HTTP/2 clients only in the idle scenario")
		}
		cfg.Squid = "" // Squid does not speak HTTP/2 to clients
	}
	if cfg.Scenario == Idle {
		cfg.CompareBinding = false // binding costs nothing per idle connection
	}
	if n := runtime.NumCPU(); cfg.ProxyCPU < 0 || cfg.ClientCPU < 0 || cfg.ProxyCPU >= n || cfg.ClientCPU >= n {
		return res, fmt.Errorf("proxy CPU %d or client CPU %d not in 0..%d", cfg.ProxyCPU, cfg.ClientCPU, n-1)
	}
	if cfg.ProxyCPU == cfg.ClientCPU {
		return res, fmt.Errorf("proxy and client must be on different CPUs (both %d)", cfg.ProxyCPU)
	}

	dir := cfg.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "proxybench-"); err != nil {
			return res, err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	if err := os.Chmod(dir, 0o755); err != nil { // Squid's user needs to reach its subdirectory
		return res, err
	}
	bumpDir, upDir := filepath.Join(dir, "bump-ca"), filepath.Join(dir, "upstream-ca")
	for _, d := range []string{bumpDir, upDir} {
		os.RemoveAll(d)
		if err := ca.Init(d, ca.InitOptions{CommonName: "proxybench " + filepath.Base(d)}); err != nil {
			return res, err
		}
	}
	bumpCert, bumpKey := filepath.Join(bumpDir, ca.CertFileName), filepath.Join(bumpDir, ca.KeyFileName)
	upCA := filepath.Join(upDir, ca.CertFileName)
	bumpRoots, err := pool(bumpCert)
	if err != nil {
		return res, err
	}
	upRoots, err := pool(upCA)
	if err != nil {
		return res, err
	}

	// This process is the client and the upstream: pin all its threads
	// (new ones inherit) to the client core.
	if err := pinTree(os.Getpid(), cfg.ClientCPU); err != nil {
		return res, err
	}

	t, err := newTopology("pb")
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, t.close()) }()
	sizes := cfg.BodySizes
	if len(sizes) == 0 {
		sizes = []int{cfg.BodySize}
	}
	up, err := startUpstream(t, upDir, cfg.Host, cfg.BodySize, slices.Max(sizes))
	if err != nil {
		return res, err
	}
	defer up.close()
	// The DNS server destination binding asks (in the upstream namespace,
	// reached over the router's link like a VPC resolver): Host resolves
	// to the upstream.
	var dnsSrv *dnstest.Server
	if err := t.upstream.Do(func() error {
		var err error
		dnsSrv, err = dnstest.Listen(netip.AddrPortFrom(upstreamAddr, 53).String())
		return err
	}); err != nil {
		return res, fmt.Errorf("dns server: %w", err)
	}
	defer dnsSrv.Close()
	dnsSrv.Set(cfg.Host, dnsTTL, upstreamAddr)

	dst := netip.AddrPortFrom(upstreamAddr, 443)
	var agg aggregator
	scenarios := func(name string, roots *x509.CertPool, p *proc) error {
		if cfg.Scenario == Idle {
			if p == nil {
				return nil // no proxy, no proxy memory
			}
			return idleScenario(ctx, cfg, &res, name, t.client, dst, roots, p, cfg.IdleHTTP2 && name == "gwlbproxy")
		}
		for _, sk := range sizeKeep(sizes) {
			size, keep := sk.size, sk.keep
			l := &load{ns: t.client, dst: dst, host: cfg.Host, roots: roots, conns: cfg.Conns, keepAlive: keep, bodyLen: int64(size)}
			scen := NewConn
			if keep {
				scen = KeepAlive
			}
			if cfg.Scenario != "" && cfg.Scenario != scen {
				continue
			}
			if len(sizes) > 1 {
				scen += "/" + sizeLabel(size)
			}
			if cfg.Warmup > 0 {
				w := l.run(ctx, cfg.Warmup)
				res.Sent[name] += w.Requests
				if w.Requests == 0 {
					return fmt.Errorf("%s %s: warm-up completed no request: %s", name, scen, w.FirstErr)
				}
			}
			if p != nil {
				if err := pinTree(p.pid(), cfg.ProxyCPU); err != nil {
					return err
				}
			}
			cfg.Log.Info("measuring", "proxy", name, "scenario", scen)
			var c0 time.Duration
			if p != nil {
				c0 = cpuTime(p.pid())
			}
			s0 := selfCPU()
			r := l.run(ctx, cfg.Duration)
			clientCPU := selfCPU() - s0
			var proxyCPU time.Duration
			if p != nil {
				proxyCPU = cpuTime(p.pid()) - c0
				if p.exited() {
					return fmt.Errorf("%s exited during the run: %v", name, p.exitErr())
				}
			}
			res.Sent[name] += r.Requests
			agg.add(&res, name, scen, r, proxyCPU, clientCPU)
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		return nil
	}

	const gwPort, squidPort = 3443, 3130
	records := filepath.Join(dir, "gwlbproxy-records.jsonl")
	os.Remove(records)
	for round := 1; round <= cfg.Rounds; round++ {
		cfg.Log.Info("round", "n", round, "of", cfg.Rounds)
		if err := runRound(ctx, cfg, round, &res, t, dir, records, bumpCert, bumpKey, upCA, upRoots, bumpRoots, scenarios); err != nil {
			return res, err
		}
	}
	return res, nil
}

// runRound runs no proxy, gwlbproxy and Squid once each.
func runRound(ctx context.Context, cfg Config, round int, res *Result, t *topology, dir, records, bumpCert, bumpKey, upCA string,
	upRoots, bumpRoots *x509.CertPool, scenarios func(string, *x509.CertPool, *proc) error) error {
	const gwPort, squidPort = 3443, 3130
	if cfg.Baseline {
		if err := t.setTProxy(0); err != nil {
			return err
		}
		if err := scenarios("none", upRoots, nil); err != nil {
			return err
		}
	}

	// gwlbproxy: records append to one file over all rounds.
	gw := func(name, records, binding, profile string, extra ...string) error {
		args := append(append([]string{}, cfg.ServerCommand[1:]...),
			"--listen", netip.AddrPortFrom(loopback, gwPort).String(),
			"--ca-cert", bumpCert, "--ca-key", bumpKey, "--upstream-ca", upCA, "--records", records,
			"--binding", binding, "--dns", netip.AddrPortFrom(upstreamAddr, 53).String())
		args = append(args, extra...)
		if profile != "" {
			args = append(args, "--cpuprofile", profile)
		}
		if cfg.UpstreamPerClient {
			args = append(args, "--upstream-per-client")
		}
		if cfg.IdleHTTP2 {
			args = append(args, "--http2")
		}
		cmd := nsexec.Command(t.router.Name, cfg.ServerCommand[0], args...)
		cmd.Env = append(cmd.Env, "GOMAXPROCS=1")
		if err := runProxy(ctx, cfg, t, name, cmd, gwPort, bumpRoots, scenarios); err != nil {
			return err
		}
		res.LogLines[name] = countLines(records)
		return nil
	}
	// Binding on and off take turns going first, round by round, so
	// neither always runs on a warmer (or busier) machine.
	runs := []func() error{func() error { return gw("gwlbproxy", records, "enforce", cfg.Profile) }}
	if cfg.CompareBinding {
		off := func() error { return gw(BindOffRow, records+".bindoff", "off", "") }
		if round%2 == 0 {
			runs = append([]func() error{off}, runs...)
		} else {
			runs = append(runs, off)
		}
	}
	if cfg.Mirror { // issue 19: the same proxy with the decryption mirror on
		mir := func() error {
			return gw(MirrorRow, records+".mirror", "enforce", "", "--mirror", "pbmirror0")
		}
		if round%2 == 0 {
			runs = append([]func() error{mir}, runs...)
		} else {
			runs = append(runs, mir)
		}
	}
	for _, run := range runs {
		if err := run(); err != nil {
			return err
		}
	}

	if cfg.Squid != "" {
		sdir := filepath.Join(dir, "squid")
		os.RemoveAll(sdir)
		cmd, err := prepareSquid(&cfg, t, sdir, squidPort, bumpCert, bumpKey, upCA)
		if err != nil {
			return err
		}
		if err := runProxy(ctx, cfg, t, "squid", cmd, squidPort, bumpRoots, scenarios); err != nil {
			return fmt.Errorf("%w\ncache.log: %s", err, tail(readFile(filepath.Join(sdir, "cache.log")), 3000))
		}
		res.LogLines["squid"] += countLines(filepath.Join(sdir, "access.log"))
	}
	return nil
}

// sizeKeep lists the (body size, keep-alive) pairs in run order.
func sizeKeep(sizes []int) []struct {
	size int
	keep bool
} {
	var out []struct {
		size int
		keep bool
	}
	for _, s := range sizes {
		for _, k := range []bool{false, true} {
			out = append(out, struct {
				size int
				keep bool
			}{s, k})
		}
	}
	return out
}

func sizeLabel(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}

// aggregator merges the rounds of each (proxy, scenario) into one row.
type aggregator struct {
	lat map[[2]string][]time.Duration
}

func (a *aggregator) add(res *Result, name, scen string, r loadResult, proxyCPU, clientCPU time.Duration) {
	if a.lat == nil {
		a.lat = map[[2]string][]time.Duration{}
	}
	k := [2]string{name, scen}
	a.lat[k] = append(a.lat[k], r.Latencies...)
	i := slices.IndexFunc(res.Rows, func(x Row) bool { return x.Proxy == name && x.Scenario == scen })
	if i < 0 {
		res.Rows = append(res.Rows, Row{Proxy: name, Scenario: scen})
		i = len(res.Rows) - 1
	}
	row := &res.Rows[i]
	row.Rounds++
	row.Requests += r.Requests
	row.Errors += r.Errors
	if row.FirstErr == "" {
		row.FirstErr = r.FirstErr
	}
	row.Elapsed += r.Elapsed
	row.ProxyCPU += proxyCPU
	row.ClientCPU += clientCPU
	lat := a.lat[k]
	slices.Sort(lat)
	merged := loadResult{Requests: row.Requests, Elapsed: row.Elapsed, Latencies: lat}
	row.RPS, row.P50, row.P99 = merged.rate(), merged.pct(0.50), merged.pct(0.99)
}

// runProxy starts a proxy, waits for its listener, points TPROXY at it,
// runs the scenarios and stops it.
func runProxy(ctx context.Context, cfg Config, t *topology, name string, cmd *exec.Cmd, port uint16,
	roots *x509.CertPool, scenarios func(string, *x509.CertPool, *proc) error) (err error) {
	p, err := startProc(name, cmd)
	if err != nil {
		return err
	}
	defer func() {
		grace := 10 * time.Second
		if cfg.Scenario == Idle {
			grace = 60 * time.Second // Squid takes its time over thousands of closed connections
		}
		if serr := p.stop(grace); serr != nil && err == nil {
			err = serr
		}
	}()
	if err := pinTree(p.pid(), cfg.ProxyCPU); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for !listening(t.router, port) {
		if p.exited() {
			return fmt.Errorf("%s exited before listening: %v\n%s", name, p.exitErr(), tail(p.stderr.String(), 3000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on port %d after 30s\n%s", name, port, tail(p.stderr.String(), 3000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := pinTree(p.pid(), cfg.ProxyCPU); err != nil {
		return err
	}
	if err := t.setTProxy(port); err != nil {
		return err
	}
	defer t.setTProxy(0)
	cfg.Log.Info("proxy up", "proxy", name, "pid", p.pid())
	return scenarios(name, roots, p)
}

func pool(certFile string) (*x509.CertPool, error) {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no certificate", certFile)
	}
	return p, nil
}

func selfCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadAvg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// WriteTable prints the rows, the gwlbproxy/Squid ratios and the targets.
func (r *Result) WriteTable(w io.Writer) {
	c := r.Config
	if c.Scenario == Idle {
		fmt.Fprintf(w, "proxy pinned to CPU %d (gwlbproxy GOMAXPROCS=1, Squid one worker); load average %s at start, %s at end\n",
			c.ProxyCPU, r.LoadAvg[0], r.LoadAvg[1])
		r.writeIdle(w)
		return
	}
	fmt.Fprintf(w, "HTTPS through a bumping proxy: %d connections, %v per scenario after %v warm-up, %d-byte responses, %d round(s) taking turns\n",
		c.Conns, c.Duration, c.Warmup, c.BodySize, max(c.Rounds, 1))
	fmt.Fprintf(w, "TLS 1.3 X25519, ECDSA P-256 CA shared by both proxies, full handshakes (no resumption), HTTP/1.1\n")
	fmt.Fprintf(w, "proxy pinned to CPU %d (gwlbproxy GOMAXPROCS=1, Squid one worker); client + upstream on CPU %d; load average %s at start, %s at end\n\n",
		c.ProxyCPU, c.ClientCPU, r.LoadAvg[0], r.LoadAvg[1])
	fmt.Fprintf(w, "%-11s %-14s %9s %9s %9s %9s %7s %12s %10s %11s\n",
		"proxy", "scenario", "requests", "req/s", "p50", "p99", "errors", "proxy CPU", "req/CPU-s", "client CPU")
	for _, x := range r.Rows {
		perCPU, pcpu := "-", "-"
		if x.ProxyCPU > 0 {
			perCPU = strconv.FormatFloat(x.PerCPUSecond(), 'f', 0, 64)
			pcpu = fmt.Sprintf("%.2fs %3.0f%%", x.ProxyCPU.Seconds(), 100*x.ProxyCPU.Seconds()/x.Elapsed.Seconds())
		}
		fmt.Fprintf(w, "%-11s %-14s %9d %9.0f %9s %9s %7d %12s %10s %10.0f%%\n",
			x.Proxy, x.Scenario, x.Requests, x.RPS, ms(x.P50), ms(x.P99), x.Errors, pcpu, perCPU,
			100*x.ClientCPU.Seconds()/x.Elapsed.Seconds())
	}
	for _, x := range r.Rows {
		if x.FirstErr != "" {
			fmt.Fprintf(w, "first error, %s %s: %s\n", x.Proxy, x.Scenario, x.FirstErr)
		}
	}
	if len(r.LogLines) > 0 {
		fmt.Fprintf(w, "\nrequest log lines (warm-up included):")
		for _, n := range []string{"gwlbproxy", BindOffRow, "squid"} {
			if l, ok := r.LogLines[n]; ok {
				fmt.Fprintf(w, " %s %d for %d requests;", n, l, r.Sent[n])
			}
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	r.writeMirrorCost(w)
	for _, scen := range []string{NewConn, KeepAlive} {
		on, ok1 := r.Find("gwlbproxy", scen)
		off, ok2 := r.Find(BindOffRow, scen)
		if !ok1 || !ok2 || on.PerCPUSecond() == 0 || off.PerCPUSecond() == 0 || off.RPS == 0 {
			continue
		}
		cost := 100 * (1 - on.PerCPUSecond()/off.PerCPUSecond())
		verdict := "met"
		if cost >= 2 {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "destination binding on vs off %-10s req per CPU-second %+.1f%% cost, req/s %+.1f%% (cache-hit path; target < 2%%: %s)\n",
			scen, cost, 100*(1-on.RPS/off.RPS), verdict)
	}
	for _, s := range []struct {
		scen   string
		target float64
	}{{NewConn, 3}, {KeepAlive, 2}} {
		g, ok1 := r.Find("gwlbproxy", s.scen)
		q, ok2 := r.Find("squid", s.scen)
		if !ok1 || !ok2 || q.RPS == 0 || q.PerCPUSecond() == 0 {
			continue
		}
		ratioCPU := g.PerCPUSecond() / q.PerCPUSecond()
		verdict := "met"
		if ratioCPU < s.target {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "gwlbproxy/squid %-10s req/s %.2fx, req per CPU-second %.2fx, p50 %.2fx lower, p99 %.2fx lower (target >= %.0fx per core: %s)\n",
			s.scen, g.RPS/q.RPS, ratioCPU, q.P50.Seconds()/g.P50.Seconds(), q.P99.Seconds()/g.P99.Seconds(), s.target, verdict)
	}
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds()*1000, 'f', 2, 64) + "ms"
}

// writeMirrorCost prints, per scenario, what the decryption mirror adds to
// gwlbproxy's CPU time per request and per MiB of response body.
func (r *Result) writeMirrorCost(w io.Writer) {
	for _, m := range r.Rows {
		if m.Proxy != MirrorRow || m.Requests == 0 {
			continue
		}
		g, ok := r.Find("gwlbproxy", m.Scenario)
		if !ok || g.Requests == 0 {
			continue
		}
		size := r.Config.BodySize
		if _, s, ok := strings.Cut(m.Scenario, "/"); ok {
			for _, n := range r.Config.BodySizes {
				if sizeLabel(n) == s {
					size = n
				}
			}
		}
		per := func(x Row) float64 { return x.ProxyCPU.Seconds() / float64(x.Requests) }
		d := per(m) - per(g)
		perMB := "-"
		if size > 0 {
			perMB = fmt.Sprintf("%+.2f ms", 1000*d/(float64(size)/(1<<20)))
		}
		fmt.Fprintf(w, "mirror cost %-14s %+.1f µs CPU per request (%.1f -> %.1f µs, %+.0f%%), %s CPU per MiB of body; req/s %.0f -> %.0f\n",
			m.Scenario, 1e6*d, 1e6*per(g), 1e6*per(m), 100*d/per(g), perMB, g.RPS, m.RPS)
	}
}
