package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/ca"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/nsexec"
	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flowlog"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// Appliance addresses inside its namespace.
const (
	HealthPort  = 8080 // on gwlbsim.ApplianceAddr, where GWLB would probe
	MetricsAddr = "127.0.0.1:16081"
)

// ApplianceCAName is the subject of the generated appliance CA.
const ApplianceCAName = "gwlbproxy demo CA"

// Rule names of the demo policy.
const (
	RuleSplice = "bank-untouched"
	RuleDeny   = "blocked-sites"
	RuleAllow  = "demo-sites"
)

// Rule names of the demo's network policy (forwarded traffic).
const (
	NetRulePing = "ping-echo-host"
	NetRuleEcho = "udp-echo"
)

// Files are the generated files of one demo run.
type Files struct {
	Dir          string // temporary directory holding everything below
	Config       string // the appliance's gwlbproxy.yaml
	ApplianceCA  string // PEM of the appliance CA (clients trust it)
	InternetCA   string // PEM of the internet's CA (proxy.upstream_ca_bundle)
	ApplianceLog string // the appliance's own log (its stderr)
}

// MakeFiles creates dir's CA (ca.Init), the internet CA bundle and the
// appliance configuration for mode. modify, if not nil, may change the
// configuration before it is written.
func MakeFiles(dir string, mode string, internetCA []byte, modify func(*config.Config)) (Files, error) {
	f := Files{
		Dir:          dir,
		Config:       filepath.Join(dir, "gwlbproxy.yaml"),
		ApplianceCA:  filepath.Join(dir, "ca", ca.CertFileName),
		InternetCA:   filepath.Join(dir, "internet-ca.pem"),
		ApplianceLog: filepath.Join(dir, "appliance.log"),
	}
	if err := ca.Init(filepath.Join(dir, "ca"), ca.InitOptions{CommonName: ApplianceCAName, Validity: 7 * 24 * time.Hour}); err != nil {
		return f, fmt.Errorf("appliance CA: %w", err)
	}
	if err := os.WriteFile(f.InternetCA, internetCA, 0o644); err != nil {
		return f, err
	}
	c := ApplianceConfig(mode, f)
	if modify != nil {
		modify(&c)
	}
	b, err := c.Marshal()
	if err != nil {
		return f, fmt.Errorf("config: %w", err)
	}
	// What the child will load must pass the same strict decoding.
	if _, err := config.Parse(b); err != nil {
		return f, fmt.Errorf("generated config: %w", err)
	}
	if err := os.WriteFile(f.Config, b, 0o644); err != nil {
		return f, err
	}
	return f, nil
}

// ApplianceConfig is the demo's appliance configuration: GENEVE from the
// simulated GWLB only, the egress mode, the tour's policy, the internet's
// CA trusted for upstreams, records on stdout.
func ApplianceConfig(mode string, f Files) config.Config {
	c := config.Default()
	c.InstanceID = "demo-appliance"
	c.Log = config.LogConfig{Level: "info", Format: "json"}
	c.Health.Listen = netip.AddrPortFrom(gwlbsim.ApplianceAddr, HealthPort).String()
	c.Metrics.Listen = MetricsAddr
	c.Drain.Deadline = 2 * time.Second

	c.Tunnel.AllowedSources = []netip.Prefix{netip.PrefixFrom(gwlbsim.GWLBAddr, 32)}
	c.Tunnel.Workers = 2
	c.Steer.EgressMode = mode
	c.Steer.IPv6 = false
	if mode == steer.EgressNAT {
		c.Steer.EgressInterface = EgressInterface
	}
	// Deny by default on every port (it follows the proxy policy's
	// default): the tour's ping and UDP echo are allowed by name.
	c.Steer.NetworkPolicy.Rules = []steer.NetRule{
		{Name: NetRulePing, Action: steer.NetAllow, Protocol: steer.ProtoICMP, Destinations: []netip.Prefix{netip.PrefixFrom(AddrEcho, 32)}},
		{Name: NetRuleEcho, Action: steer.NetAllow, Protocol: steer.ProtoUDP, Destinations: []netip.Prefix{netip.PrefixFrom(AddrEcho, 32)},
			Ports: []policy.PortRange{{Lo: EchoPort, Hi: EchoPort}}},
	}
	c.Proxy.UpstreamCABundle = f.InternetCA
	c.Proxy.DialTimeout = 5 * time.Second
	// Destination binding (on by default) asks the topology's resolver.
	c.Proxy.Binding.Resolver.Servers = []string{ResolverAddr.String()}
	c.Proxy.Policy = policy.Config{
		DefaultAction: policy.Deny,
		NoSNIAction:   "deny",
		ECHAction:     policy.ECHIgnore,
		Rules: []policy.Rule{
			{Name: RuleSplice, Action: policy.Splice, Domains: []string{HostBank}},
			{Name: RuleDeny, Action: policy.Deny, Domains: []string{HostBlocked}},
			{Name: RuleAllow, Action: policy.Allow, Domains: []string{"*.demo.test"}},
		},
	}
	c.Logship.Sink = logship.SinkStdout
	c.Logship.Spool.Dir = filepath.Join(f.Dir, "spool")
	c.Logship.DeadLetterPath = filepath.Join(f.Dir, "deadletter.jsonl")
	c.Logship.File.Path = filepath.Join(f.Dir, "records.jsonl")
	c.Logship.FlushInterval = 200 * time.Millisecond
	c.CA.CertFile = f.ApplianceCA
	c.CA.KeyFile = filepath.Join(filepath.Dir(f.ApplianceCA), ca.KeyFileName)
	return c
}

// Appliance is a running `gwlbproxy run` child process inside the
// appliance namespace.
type Appliance struct {
	Cmd     *exec.Cmd
	Records *Records
	logs    *lineLog
	done    chan struct{}
	waitErr error
	logFile *os.File
}

// StartAppliance starts binary with the config in files inside namespace
// ns, and waits until it reports ready (or ctx ends, or it exits). The
// child is killed if this process dies.
func StartAppliance(ctx context.Context, binary, ns string, f Files, records *Records, env ...string) (*Appliance, error) {
	lf, err := os.OpenFile(f.ApplianceLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := nsexec.Command(ns, binary, "run", "--config", f.Config)
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	a := &Appliance{Cmd: cmd, Records: records, logs: newLineLog(lf), done: make(chan struct{}), logFile: lf}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); records.readFrom(stdout) }()
	go func() { defer readers.Done(); a.logs.readFrom(stderr) }()
	go func() {
		readers.Wait()
		a.waitErr = cmd.Wait()
		lf.Close()
		close(a.done)
	}()
	select {
	case <-a.logs.ready:
		return a, nil
	case <-a.done:
		return nil, fmt.Errorf("appliance exited before ready (%v):\n%s", a.waitErr, a.logs.tail(20))
	case <-ctx.Done():
		a.Kill()
		return nil, fmt.Errorf("appliance not ready: %w\n%s", ctx.Err(), a.logs.tail(20))
	}
}

// PID is the appliance's process id.
func (a *Appliance) PID() int { return a.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (a *Appliance) Done() <-chan struct{} { return a.done }

// Stop sends SIGTERM (graceful drain) and waits up to timeout, then kills.
func (a *Appliance) Stop(timeout time.Duration) error {
	_ = a.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		return a.waitErr
	case <-time.After(timeout):
		a.Kill()
		return fmt.Errorf("appliance did not stop within %s; killed", timeout)
	}
}

// Kill sends SIGKILL (a crash) and waits for the exit.
func (a *Appliance) Kill() {
	_ = a.Cmd.Process.Kill()
	<-a.done
}

// LogTail returns the last n lines of the appliance's own log.
func (a *Appliance) LogTail(n int) string { return a.logs.tail(n) }

// LogContains reports whether any log line so far contains s.
func (a *Appliance) LogContains(s string) bool { return a.logs.contains(s) }

// MemoryHWM reads the appliance's peak resident set size (VmHWM) and
// current one (VmRSS), in bytes.
func (a *Appliance) MemoryHWM() (hwm, rss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.PID()))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmHWM" && k != "VmRSS") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if k == "VmHWM" {
			hwm = n << 10
		} else {
			rss = n << 10
		}
	}
	if hwm == 0 {
		return 0, 0, errors.New("VmHWM not found")
	}
	return hwm, rss, nil
}

// lineLog copies the appliance's stderr to a file, keeps the last lines
// and notices the "ready" line.
type lineLog struct {
	w     io.Writer
	mu    sync.Mutex
	lines []string
	ready chan struct{}
	once  sync.Once
}

func newLineLog(w io.Writer) *lineLog { return &lineLog{w: w, ready: make(chan struct{})} }

func (l *lineLog) readFrom(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		_, _ = io.WriteString(l.w, line+"\n")
		l.mu.Lock()
		l.lines = append(l.lines, line)
		if len(l.lines) > 2000 {
			l.lines = append(l.lines[:0:0], l.lines[1000:]...)
		}
		l.mu.Unlock()
		if strings.Contains(line, `"msg":"gwlbproxy ready"`) || strings.Contains(line, `msg="gwlbproxy ready"`) {
			l.once.Do(func() { close(l.ready) })
		}
	}
}

func (l *lineLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.lines
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return strings.Join(s, "\n")
}

func (l *lineLog) contains(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// Record is one request record as the appliance ships it. Raw keeps the
// JSON line; Keys its field names in order, to check the record's shape.
type Record struct {
	Time          time.Time `json:"time"`
	RecordID      string    `json:"record_id"`
	InstanceID    string    `json:"instance_id"`
	EndpointID    string    `json:"endpoint_id"`
	ClientIP      string    `json:"client_ip"`
	ClientPort    int       `json:"client_port"`
	DstIP         string    `json:"dst_ip"`
	DstPort       int       `json:"dst_port"`
	SNI           string    `json:"sni"`
	Host          string    `json:"host"`
	Method        string    `json:"method"`
	Scheme        string    `json:"scheme"`
	Path          string    `json:"path"`
	Status        int       `json:"status"`
	Action        string    `json:"action"`
	Rule          string    `json:"rule"`
	BytesIn       int64     `json:"bytes_in"`
	BytesOut      int64     `json:"bytes_out"`
	DurationMS    float64   `json:"duration_ms"`
	TLSVersion    string    `json:"tls_version"`
	ALPN          string    `json:"alpn"`
	UpstreamError string    `json:"upstream_error"`
	UserAgent     string    `json:"user_agent"`
	Bind          string    `json:"bind"`
	BindName      string    `json:"bind_name"`
	BindAnswers   string    `json:"bind_answers"`
	PolicyVersion string    `json:"policy_version"`

	// Flow records (tunnel/flowlog): record_type flow, flow_interim,
	// flow_denied, flow_summary; request records have none.
	RecordType string `json:"record_type"`
	Protocol   string `json:"protocol"`
	PacketsIn  int64  `json:"packets_in"`
	PacketsOut int64  `json:"packets_out"`
	TCPState   string `json:"tcp_state"`

	Raw  string   `json:"-"`
	Keys []string `json:"-"`
	// raw holds every field's JSON value, for Field.
	raw map[string]json.RawMessage
}

// Of reports whether r is the record of res's connection: same client
// address and port, same server address and port. The client's port alone
// is not enough: it may have served an earlier connection to another
// server, whose record is already in.
func (r *Record) Of(res Result) bool {
	return res.Local.IsValid() && res.Remote.IsValid() &&
		r.ClientIP == res.Local.Addr().String() && r.ClientPort == int(res.Local.Port()) &&
		r.DstIP == res.Remote.Addr().String() && r.DstPort == int(res.Remote.Port())
}

// Field returns a record field by its JSON name as text: a string's value,
// a number as written; "?name" when the record has no such field.
func (r *Record) Field(k string) string {
	v, ok := r.raw[k]
	if !ok {
		return "?" + k
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s
	}
	return string(v)
}

// RecordFields are the fields every record carries (the team contract).
var RecordFields = []string{"time", "record_id", "instance_id", "endpoint_id", "client_ip", "client_port",
	"dst_ip", "dst_port", "sni", "host", "method", "scheme", "path", "status", "action", "rule",
	"bytes_in", "bytes_out", "duration_ms", "tls_version", "alpn", "upstream_error", "user_agent",
	"bind", "bind_name", "bind_answers", "policy_version"}

// FlowRecordFields and FlowSummaryFields are the fields of flow records
// (tunnel/flowlog).
var (
	FlowRecordFields  = flowlog.RecordFields
	FlowSummaryFields = flowlog.SummaryFields
)

// Records collects the appliance's records (across restarts).
type Records struct {
	mu     sync.Mutex
	list   []Record
	bad    []string
	other  []string
	notify chan struct{}
}

// NewRecords returns an empty collection.
func NewRecords() *Records { return &Records{notify: make(chan struct{})} }

// Add parses one JSON record line and adds it.
func (r *Records) Add(line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	var rec Record
	err := json.Unmarshal(line, &rec)
	if err == nil {
		rec.Keys, rec.raw, err = jsonFields(line)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.bad = append(r.bad, string(line))
		return
	}
	if rec.RecordID == "" {
		// Not a request record (an EMF metrics line, for one).
		r.other = append(r.other, string(line))
		return
	}
	rec.Raw = string(line)
	r.list = append(r.list, rec)
	close(r.notify)
	r.notify = make(chan struct{})
}

func (r *Records) readFrom(rd io.Reader) {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 256<<10), 4<<20)
	for sc.Scan() {
		r.Add(sc.Bytes())
	}
}

// All returns a copy of every record so far.
func (r *Records) All() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.list...)
}

// Bad returns lines that were not JSON records.
func (r *Records) Bad() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bad...)
}

// Wait returns the records matching match once at least n have arrived,
// or what matched so far with ctx's error.
func (r *Records) Wait(ctx context.Context, n int, match func(*Record) bool) ([]Record, error) {
	for {
		r.mu.Lock()
		var got []Record
		for i := range r.list {
			if match(&r.list[i]) {
				got = append(got, r.list[i])
			}
		}
		ch := r.notify
		r.mu.Unlock()
		if len(got) >= n {
			return got, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return got, fmt.Errorf("waiting for %d records (have %d): %w", n, len(got), ctx.Err())
		}
	}
}

// jsonFields lists the top-level keys of a JSON object in order, with
// their values.
func jsonFields(b []byte) ([]string, map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, nil, fmt.Errorf("not a JSON object")
	}
	var keys []string
	vals := map[string]json.RawMessage{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		k, ok := t.(string)
		if !ok {
			return nil, nil, fmt.Errorf("bad key %v", t)
		}
		keys = append(keys, k)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, err
		}
		vals[k] = v
	}
	return keys, vals, nil
}
