// Package tunnelbench measures the GENEVE tunnel of the real gwlbproxy
// binary against plain kernel forwarding on the same network namespaces,
// in one run, and prints a table: `gwlbproxy bench tunnel`.
//
// The topology is tunnel/gwlbsim's (gwlb -- appliance -- sink). The
// appliance is `gwlbproxy run` started inside the appliance namespace
// through nsexec, with one-arm steering (steer.egress_mode tunnel), so a
// packet goes GENEVE in -> gwi- -> kernel routing -> gwo- -> GENEVE out,
// the production path. The generator (tunnel/gwlbsim.Bench: prebuilt
// Ethernet frames written with sendmmsg on an AF_PACKET socket with
// PACKET_QDISC_BYPASS, outer UDP checksum 0 as a NIC that verified it
// would leave it, returns counted by an nftables ingress rule where they
// arrive, a stepped search for the best
// rate at <= 1 % loss) is pinned to one CPU and the appliance to another,
// so that the appliance's figures are those of one core. The table prints
// the generator's CPU: a baseline whose generator is near 100 % measures
// the generator, not the kernel.
//
// Plain forwarding is the baseline the issue asks for: the same inner
// packets sent from the GWLB namespace through the appliance namespace to
// the sink, forwarded by the kernel alone. veth delivers on the sending
// CPU, so receive packet steering on the appliance's underlay link moves
// everything from the appliance's ingress onwards to the appliance's CPU
// in both modes: plain forwarding and the tunnel are measured on the same
// core, and the generator's core only sends and counts. What leaves the
// appliance (GENEVE returns to the GWLB namespace, plain packets to the
// sink) is steered back to the generator's core, as a NIC would take it
// off the appliance: only the appliance's own work is on its core.
package tunnelbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/ca"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/nsexec"
	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// Config configures Run.
type Config struct {
	// Binary is the gwlbproxy executable to run as the appliance.
	Binary string
	// Payloads are the inner UDP payload sizes: 64 (the small
	// packets) and 8472 (an 8500-byte inner packet, GWLB's MTU).
	Payloads []int
	// Flows is the number of inner 5-tuples (and GWLB source ports).
	Flows int
	// Step is how long each offered rate is held.
	Step time.Duration
	// GeneratorCPU and ApplianceCPU pin the two sides; -1 leaves one
	// unpinned.
	GeneratorCPU, ApplianceCPU int
	// Offload sets tunnel.offload in the appliance's config.
	Offload bool
	// Workers sets tunnel.workers (0: one per CPU the process may use).
	Workers int
	// Notrack sets steer.notrack_geneve (outer GENEVE exempt from
	// conntrack).
	Notrack bool
	// ConntrackChecksum sets steer.conntrack_checksum (conntrack verifies
	// the transport checksum of what it tracks; a decapsulated packet's
	// is unverified, so at 8500 B this reads the whole payload).
	ConntrackChecksum bool
	// Datapaths are the tunnel.datapath values measured, each with its
	// own appliance run ("userspace", "ebpf"); plain forwarding is
	// measured during the first.
	Datapaths []string
	// Rates, if set, holds exactly these offered rates (pps) instead of
	// searching (gwlbsim.BenchConfig.Rates); compare builds by the
	// appliance core's time per packet at a rate both sustain.
	Rates []float64
	// NoBaseline skips the plain and plain+steer rows (for profiling or
	// comparing builds of the tunnel alone).
	NoBaseline bool
	// PerfDir, if set, records the appliance's CPU with `perf record -g`
	// during every row into PerfDir/<path>-<inner size>.data, for a
	// per-function breakdown of where the core's time goes.
	PerfDir string
	// Dir keeps config and logs; empty uses a temporary directory.
	Dir string
	// Log receives progress; nil discards.
	Log *slog.Logger
}

// DefaultConfig returns the measurement.
func DefaultConfig() Config {
	return Config{Payloads: []int{64, 8472}, Flows: 64, Step: time.Second,
		GeneratorCPU: 0, ApplianceCPU: 1, Offload: true, Workers: 1,
		Datapaths:         []string{"userspace", "ebpf"},
		Notrack:           steer.DefaultConfig().NotrackGeneve,
		ConntrackChecksum: steer.DefaultConfig().ConntrackChecksum}
}

// Row is one measurement.
type Row struct {
	// Path is "plain" (kernel forwarding, no appliance running),
	// "plain+steer" (the same with the appliance's steering rules in the
	// namespace, the appliance idle), or the tunnel's datapath:
	// "userspace", "ebpf".
	Path      string
	InnerSize int
	gwlbsim.BenchResult
	// ApplianceCPU is the appliance process's CPU time over the run.
	ApplianceCPU time.Duration
	// ApplianceCore is how busy the appliance's CPU was (0..1) over the
	// run, softirq work included.
	ApplianceCore float64
	// GeneratorCore is how busy the generator's CPU was (0..1) over the
	// run, softirq work included (the returns' delivery to the counting
	// socket may land there).
	GeneratorCore float64
	// CoreSoftirq is the share (0..1) of the appliance CPU's busy time
	// that /proc/stat's tick sampling found in interrupt or softirq
	// context: the kernel's own packet work (RPS receive, veth delivery).
	// Without IRQ time accounting a process's time may include softirq
	// work that ran inside its system calls, so the two overlap.
	CoreSoftirq float64
	// CorePerPacket is the appliance CPU's busy time per packet received
	// back, over the run.
	CorePerPacket time.Duration
	// BPFIngress and BPFEgress are the fast-path programs' mean run time
	// per packet (kernel.bpf_stats_enabled; ebpf rows only). The rest of
	// CorePerPacket is the kernel's own work around them.
	BPFIngress, BPFEgress time.Duration
	// Breakdown is the appliance core's packet work by stage, from perf
	// (Config.PerfDir set and perf installed).
	Breakdown *Breakdown
}

// Result is every row: per payload size plain, then each datapath.
type Result struct {
	Config Config
	Rows   []Row
	// LoadAvg is /proc/loadavg (1, 5, 15 min) at the start and end.
	LoadAvg [2]string
}

// Run builds the topology, starts the appliance, measures and tears
// everything down.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("bench tunnel needs root (network namespaces, tun devices)")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "gwlbproxy-tunnelbench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	topo, err := gwlbsim.NewTopology(gwlbsim.TopologyConfig{Prefix: "tb",
		Endpoints: []gwlbsim.EndpointConfig{{ID: 0x0123456789abcdef, AttachmentID: 1}}})
	if err != nil {
		return nil, err
	}
	defer topo.Close()
	if err := steerRx(topo.Appliance, "u0", cfg.ApplianceCPU); err != nil {
		return nil, err
	}
	// What leaves the appliance is received (and counted) on the
	// generator's CPU: the GENEVE returns in the GWLB namespace, the plain
	// packets in the sink. On the appliance's CPU, that delivery would be
	// work no appliance does (its packets leave through a NIC), and it
	// would share the appliance CPU's backlog queue with the generator's
	// flood: measured, 23 % of plain forwarding's packets were dropped there
	// after being forwarded, none with the delivery moved.
	if err := steerRx(topo.GWLB, "u0", cfg.GeneratorCPU); err != nil {
		return nil, err
	}
	if err := steerRx(topo.Sink, "s0", cfg.GeneratorCPU); err != nil {
		return nil, err
	}
	res := &Result{Config: cfg, LoadAvg: [2]string{loadAvg()}}
	defer func() { res.LoadAvg[1] = loadAvg() }()
	// The baseline: plain forwarding before any appliance runs, so the
	// namespace has no nftables rules, policy routing or conntrack. The
	// appliance's steering is measured separately ("plain+steer"), so
	// that the share of the gap it explains shows.
	for _, size := range cfg.Payloads {
		if cfg.NoBaseline {
			break
		}
		row, err := measure(ctx, cfg, topo, gwlbsim.ModePlain, size, "plain", nil, 0)
		if err != nil {
			return res, err
		}
		log.Info("measured", "path", row.Path, "inner", row.InnerSize, "best_pps", int(row.BestPPS), "flat_out_recv", int(row.FlatOut.ReceivedPPS))
		res.Rows = append(res.Rows, row)
	}
	for i, dp := range cfg.Datapaths {
		if err := runDatapath(ctx, cfg, topo, dir, dp, i == 0 && !cfg.NoBaseline, res, log); err != nil {
			res.sort()
			return res, err
		}
	}
	res.sort()
	return res, nil
}

// runDatapath starts the appliance with tunnel.datapath dp and measures
// the tunnel at every payload size (and plain forwarding, with plain set,
// while that appliance idles: the same namespaces, the same programs
// attached).
func runDatapath(ctx context.Context, cfg Config, topo *gwlbsim.Topology, dir, dp string, plain bool, res *Result, log *slog.Logger) error {
	cfgFile, err := writeConfig(dir, cfg, dp)
	if err != nil {
		return err
	}
	logFile := filepath.Join(dir, "appliance-"+dp+".log")
	app, err := start(ctx, cfg, topo.Appliance.Name, cfgFile, logFile)
	if err != nil {
		return err
	}
	defer app.stop()
	log.Info("appliance ready", "pid", app.cmdPid(), "config", cfgFile, "datapath", dp)

	// Warm up: the first GENEVE packet creates the tunnel pair (and its
	// steering); measure only once it carries traffic.
	warm := gwlbsim.DefaultBenchConfig(topo)
	warm.Step, warm.Steps, warm.Flows, warm.CPU = 500*time.Millisecond, 1, cfg.Flows, cfg.GeneratorCPU
	var wr gwlbsim.BenchResult
	for deadline := time.Now().Add(30 * time.Second); ; {
		if wr, err = gwlbsim.Bench(ctx, warm); err != nil {
			return err
		}
		if wr.FlatOut.ReceivedPPS > 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no GENEVE came back from the appliance (datapath %s); its log:\n%s", dp, tail(logFile, 20))
		}
	}
	_ = pinAll(app.pid, cfg.ApplianceCPU) // threads started since
	var progs *bpfProgs
	if dp == "ebpf" {
		if !strings.Contains(tail(logFile, 400), `"datapath":"ebpf"`) {
			return fmt.Errorf("appliance did not start the eBPF datapath; its log:\n%s", tail(logFile, 20))
		}
		// Run-time statistics cost a little per program run; they are
		// on only for this datapath's measurements.
		if progs, err = openBPFProgs(topo.Appliance, "u0"); err != nil {
			log.Warn("no BPF run-time statistics", "err", err)
		} else {
			defer progs.Close()
		}
	}

	for _, size := range cfg.Payloads {
		modes := []gwlbsim.Mode{gwlbsim.ModeTunnel}
		if plain {
			modes = []gwlbsim.Mode{gwlbsim.ModePlain, gwlbsim.ModeTunnel}
		}
		for _, mode := range modes {
			path := "plain+steer"
			if mode == gwlbsim.ModeTunnel {
				path = dp
			}
			row, err := measure(ctx, cfg, topo, mode, size, path, progs, app.pid)
			if err != nil {
				return err
			}
			log.Info("measured", "path", path, "inner", row.InnerSize, "best_pps", int(row.BestPPS), "flat_out_recv", int(row.FlatOut.ReceivedPPS))
			res.Rows = append(res.Rows, row)
		}
	}
	return nil
}

// measure runs one bench (mode, payload size) and reads the appliance's
// process (pid; 0 for none), its CPU and the programs' run times around
// it.
func measure(ctx context.Context, cfg Config, topo *gwlbsim.Topology, mode gwlbsim.Mode, size int, path string, progs *bpfProgs, pid int) (Row, error) {
	bc := gwlbsim.DefaultBenchConfig(topo)
	bc.Mode, bc.PayloadSize, bc.Flows, bc.Step, bc.CPU = mode, size, cfg.Flows, cfg.Step, cfg.GeneratorCPU
	bc.Rates = cfg.Rates
	var in0, out0 bpfStage
	if progs != nil {
		in0, out0 = progs.read()
	}
	stopPerf := startPerf(cfg, path, size)
	c0 := procCPU(pid)
	s0, g0 := cpuTimes(cfg.ApplianceCPU), cpuTimes(cfg.GeneratorCPU)
	r, err := gwlbsim.Bench(ctx, bc)
	s1, g1 := cpuTimes(cfg.ApplianceCPU), cpuTimes(cfg.GeneratorCPU)
	stopPerf()
	busy := s1.busy - s0.busy
	if err != nil {
		return Row{}, fmt.Errorf("%s %d B: %w", path, size, err)
	}
	row := Row{Path: path, InnerSize: r.InnerSize, BenchResult: r, ApplianceCPU: procCPU(pid) - c0}
	if progs != nil && mode == gwlbsim.ModeTunnel {
		in1, out1 := progs.read()
		row.BPFIngress, row.BPFEgress = perRun(in0, in1), perRun(out0, out1)
	}
	if total := s1.total - s0.total; total > 0 {
		row.ApplianceCore = float64(busy) / float64(total)
	}
	if total := g1.total - g0.total; total > 0 {
		row.GeneratorCore = float64(g1.busy-g0.busy) / float64(total)
	}
	if busy > 0 {
		row.CoreSoftirq = float64(s1.softirq-s0.softirq) / float64(busy)
	}
	var got float64
	steps := append([]gwlbsim.StepResult{r.FlatOut}, r.Steps...)
	if len(cfg.Rates) > 0 {
		steps = r.Steps
	}
	for _, st := range steps {
		got += st.ReceivedPPS * cfg.Step.Seconds()
	}
	if got > 0 {
		row.CorePerPacket = time.Duration(float64(busy) / 100 * 1e9 / got) // USER_HZ jiffies
	}
	if cfg.PerfDir != "" {
		// The packets behind the profile, to turn samples into time
		// per packet.
		base := filepath.Join(cfg.PerfDir, fmt.Sprintf("%s-%d", path, size+28))
		_ = os.WriteFile(base+".packets", []byte(fmt.Sprintf("%.0f\n", got)), 0o644)
		if bd, err := perfBreakdown(base+".data", got); err == nil {
			row.Breakdown = bd
		} else if cfg.Log != nil {
			cfg.Log.Warn("perf breakdown", "file", base+".data", "err", err)
		}
	}
	if r.BadLength > 0 {
		return row, fmt.Errorf("%s %d B: %d datagrams of the wrong length came back", path, size, r.BadLength)
	}
	return row, nil
}

// startPerf starts `perf record` on the appliance's CPU when cfg.PerfDir
// is set, and returns what stops it.
func startPerf(cfg Config, path string, size int) func() {
	if cfg.PerfDir == "" || cfg.ApplianceCPU < 0 {
		return func() {}
	}
	out := filepath.Join(cfg.PerfDir, fmt.Sprintf("%s-%d.data", path, size+28))
	cmd := exec.Command("perf", "record", "-q", "-g", "-C", strconv.Itoa(cfg.ApplianceCPU), "-o", out)
	if err := cmd.Start(); err != nil {
		if cfg.Log != nil {
			cfg.Log.Warn("perf record", "err", err)
		}
		return func() {}
	}
	return func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
	}
}

// loadAvg is /proc/loadavg's first three fields: other work on the machine
// makes every figure noisy, so the table states it.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// sort orders rows by size, then plain, plain+steer, userspace, ebpf.
func (r *Result) sort() {
	rank := func(p string) int {
		switch p {
		case "plain":
			return 0
		case "plain+steer":
			return 1
		case "userspace":
			return 2
		}
		return 3
	}
	sort.SliceStable(r.Rows, func(i, j int) bool {
		a, b := r.Rows[i], r.Rows[j]
		if a.InnerSize != b.InnerSize {
			return a.InnerSize < b.InnerSize
		}
		return rank(a.Path) < rank(b.Path)
	})
}

func writeConfig(dir string, cfg Config, datapath string) (string, error) {
	caDir := filepath.Join(dir, "ca-"+datapath)
	if err := ca.Init(caDir, ca.InitOptions{CommonName: "gwlbproxy tunnel bench CA", Validity: 24 * time.Hour}); err != nil {
		return "", fmt.Errorf("bench CA: %w", err)
	}
	c := config.Default()
	c.InstanceID = "tunnel-bench"
	c.Log = config.LogConfig{Level: "info", Format: "json"}
	// Health and metrics on loopback ports nothing else uses in the
	// appliance's own namespace.
	c.Health.Listen = "127.0.0.1:18080"
	c.Metrics.Listen = "127.0.0.1:19100"
	c.Drain.Deadline = time.Second
	c.Tunnel.Listen = gwlbsim.ApplianceAddr
	c.Tunnel.AllowedSources = []netip.Prefix{netip.PrefixFrom(gwlbsim.GWLBAddr, 32)}
	c.Tunnel.Offload = cfg.Offload
	c.Tunnel.Workers = cfg.Workers
	c.Tunnel.Datapath = datapath
	c.Steer.EgressMode = steer.EgressTunnel
	c.Steer.IPv6 = false
	c.Steer.NotrackGeneve = cfg.Notrack
	c.Steer.ConntrackChecksum = cfg.ConntrackChecksum
	// The bench forwards UDP through the tunnel: the network policy (whose
	// default follows the proxy's deny) must let it pass. Flow records stay
	// on, as in production.
	c.Steer.NetworkPolicy.DefaultAction = steer.NetAllow
	c.CA.CertFile = filepath.Join(caDir, ca.CertFileName)
	c.CA.KeyFile = filepath.Join(caDir, ca.KeyFileName)
	c.Logship.Sink = logship.SinkStdout
	c.Logship.Spool.Dir = filepath.Join(dir, "spool")
	c.Logship.DeadLetterPath = filepath.Join(dir, "deadletter.jsonl")
	b, err := c.Marshal()
	if err != nil {
		return "", fmt.Errorf("config: %w", err)
	}
	if _, err := config.Parse(b); err != nil {
		return "", fmt.Errorf("generated config: %w", err)
	}
	f := filepath.Join(dir, "gwlbproxy-"+datapath+".yaml")
	return f, os.WriteFile(f, b, 0o644)
}

type appliance struct {
	pid  int
	proc *os.Process
	done chan struct{}
	log  *os.File
}

func (a *appliance) cmdPid() int { return a.pid }

// start runs `binary run --config file` in namespace ns with the CPU
// affinity of cpu (inherited from the forking thread), and waits for the
// "gwlbproxy ready" log line.
func start(ctx context.Context, cfg Config, ns, file, logPath string) (*appliance, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := nsexec.Command(ns, cfg.Binary, "run", "--config", file)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout = io.Discard
	cmd.Stderr = lf
	// Fork from a thread pinned to the appliance's CPU: the child and
	// every thread it creates inherit the mask. The thread then waits for
	// the child: Pdeathsig fires when the forking thread exits.
	a := &appliance{done: make(chan struct{}), log: lf}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread's mask is changed
		if cfg.ApplianceCPU >= 0 {
			var set unix.CPUSet
			set.Set(cfg.ApplianceCPU)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				errc <- fmt.Errorf("pin appliance to CPU %d: %w", cfg.ApplianceCPU, err)
				return
			}
		}
		if err := cmd.Start(); err != nil {
			errc <- err
			return
		}
		a.pid, a.proc = cmd.Process.Pid, cmd.Process
		errc <- nil
		_ = cmd.Wait()
		close(a.done)
	}()
	if err := <-errc; err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", cfg.Binary, err)
	}
	deadline := time.After(60 * time.Second)
	for {
		if strings.Contains(tail(logPath, 200), "gwlbproxy ready") {
			return a, nil
		}
		select {
		case <-a.done:
			lf.Close()
			return nil, fmt.Errorf("appliance exited before ready:\n%s", tail(logPath, 20))
		case <-ctx.Done():
			a.stop()
			return nil, ctx.Err()
		case <-deadline:
			a.stop()
			return nil, fmt.Errorf("appliance not ready after 60s:\n%s", tail(logPath, 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (a *appliance) stop() {
	_ = a.proc.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(15 * time.Second):
		_ = a.proc.Kill()
		<-a.done
	}
	a.log.Close()
}

// pinAll sets the affinity of every thread of pid.
func pinAll(pid, cpu int) error {
	if cpu < 0 {
		return nil
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	var set unix.CPUSet
	set.Set(cpu)
	var errs []error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err == nil {
			errs = append(errs, unix.SchedSetaffinity(tid, &set))
		}
	}
	return errors.Join(errs...)
}

// procCPU is the user+system CPU time of process pid so far.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+2:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// jiffies are a CPU's counters from /proc/stat.
type jiffies struct {
	busy, total int64
	softirq     int64 // irq + softirq
}

// cpuTimes reads cpu's line of /proc/stat (zeros for cpu < 0 or on
// error).
func cpuTimes(cpu int) (j jiffies) {
	if cpu < 0 {
		return j
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return j
	}
	want := fmt.Sprintf("cpu%d ", cpu)
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, want) {
			continue
		}
		// user nice system idle iowait irq softirq steal ...
		for i, f := range strings.Fields(line)[1:] {
			v, _ := strconv.ParseInt(f, 10, 64)
			j.total += v
			if i != 3 && i != 4 { // idle, iowait
				j.busy += v
			}
			if i == 5 || i == 6 {
				j.softirq += v
			}
		}
	}
	return j
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WriteTable prints the result.
func (r *Result) WriteTable(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "gwlbproxy bench tunnel: %d flows, %s steps, best rate at <= 1%% loss; generator (AF_PACKET, PACKET_QDISC_BYPASS, prebuilt frames, sendmmsg) on CPU %d, appliance on CPU %d; tunnel.offload=%v steer.notrack_geneve=%v steer.conntrack_checksum=%v\n",
		c.Flows, c.Step, c.GeneratorCPU, c.ApplianceCPU, c.Offload, c.Notrack, c.ConntrackChecksum)
	fmt.Fprintf(w, "load average (1 5 15 min): %s at the start, %s at the end\n", r.LoadAvg[0], r.LoadAvg[1])
	fmt.Fprintf(w, "path: plain = kernel forwarding without a tunnel, before the appliance starts (the baseline); plain+steer = the same with the appliance's steering (nftables, policy routing, conntrack) in the namespace; userspace, ebpf = the tunnel with that tunnel.datapath\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "inner size\tpath\tbest pps\tbest Gbps\tflat-out sent pps\tflat-out recv pps\tflat-out loss\tflat-out/best\tgenerator CPU\tgenerator core busy\tappliance CPU\tappliance core busy\tof it softirq\tcore per packet\tBPF in/out per packet\tof plain\t")
	var plain float64
	for _, row := range r.Rows {
		ratio, flat := "", ""
		if row.Path == "plain" {
			plain = row.BestPPS
		} else if plain > 0 {
			ratio = fmt.Sprintf("%.2f", row.BestPPS/plain)
		}
		if row.BestPPS > 0 {
			flat = fmt.Sprintf("%.2f", row.FlatOut.ReceivedPPS/row.BestPPS)
		}
		d := row.Duration.Seconds()
		gen := 0.0
		if row.Sending > 0 {
			gen = row.SenderCPU.Seconds() / row.Sending.Seconds() * 100
		}
		app := row.ApplianceCPU.Seconds() / d * 100
		bpf := ""
		if row.BPFIngress > 0 || row.BPFEgress > 0 {
			bpf = fmt.Sprintf("%.2f/%.2f µs", row.BPFIngress.Seconds()*1e6, row.BPFEgress.Seconds()*1e6)
		}
		fmt.Fprintf(tw, "%d B\t%s\t%.0f\t%.2f\t%.0f\t%.0f\t%.1f %%\t%s\t%.0f %%\t%.0f %%\t%.0f %%\t%.0f %%\t%.0f %%\t%.2f µs\t%s\t%s\t\n",
			row.InnerSize, row.Path, row.BestPPS, row.BestGbps, row.FlatOut.SentPPS, row.FlatOut.ReceivedPPS,
			row.FlatOut.Loss*100, flat, gen, row.GeneratorCore*100, app, row.ApplianceCore*100, row.CoreSoftirq*100, row.CorePerPacket.Seconds()*1e6, bpf, ratio)
	}
	tw.Flush()
	fmt.Fprintf(w, "\ngenerator CPU: the sending thread's time / time spent sending (one core = 100 %%);\n")
	fmt.Fprintf(w, "generator core busy: the generator's whole CPU from /proc/stat over the run (drains included), which also receives and counts the returns (RPS, an nftables ingress rule):\n")
	fmt.Fprintf(w, "  near 100 %% the generator, not the path, is the limit.\n")
	fmt.Fprintf(w, "the appliance namespace's receive work (plain forwarding included) runs on the appliance's CPU (RPS on its underlay link);\n")
	fmt.Fprintf(w, "appliance CPU: the process's own time; appliance core busy: the whole CPU (softirq work included) from /proc/stat;\n")
	fmt.Fprintf(w, "BPF in/out per packet: mean run time of the eBPF datapath's ingress and egress programs (kernel.bpf_stats_enabled during the ebpf rows); the rest of core per packet is the kernel around them.\n")
	fmt.Fprintf(w, "of it softirq: the share of that busy time in interrupt and softirq context (the kernel's packet work; without IRQ time accounting the process's time may include some of it).\n")
	for _, row := range r.Rows {
		if row.Breakdown == nil {
			continue
		}
		fmt.Fprintf(w, "\n%d B %s: the appliance core's packet work (perf samples through net_rx_action) %.2f µs per packet:\n",
			row.InnerSize, row.Path, row.Breakdown.PerPacket.Seconds()*1e6)
		for _, st := range row.Breakdown.Stages {
			fmt.Fprintf(w, "  %-30s %6.2f µs  (%s)\n", st.Name, st.PerPacket.Seconds()*1e6, st.Top)
		}
	}
}
