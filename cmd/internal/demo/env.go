package demo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gwlbproxy/gwlbproxy/ca"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/health"
	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
)

// Options configure an Env.
type Options struct {
	// Mode is the egress mode, "nat" or "tunnel".
	Mode string
	// Binary is the gwlbproxy executable to run as the appliance.
	Binary string
	// Dir holds the generated files; empty: a new temporary directory,
	// removed by Close.
	Dir string
	// Prefix starts every namespace name (a random suffix follows).
	Prefix string
	// Modify, if set, adjusts the appliance configuration.
	Modify func(*config.Config)
	// CloudWatchFake ships records to a CloudWatch Logs fake (logship's
	// cwlfake, served from this process inside the appliance namespace)
	// instead of the appliance's stdout; Records then come from the fake.
	CloudWatchFake bool
	// Progress, if set, is told about each setup step as it starts.
	Progress func(step string)
	// Sim configures the GWLB simulator (health checks of the appliance,
	// for one); zero: no health checks.
	Sim gwlbsim.Config
	// Prepare, if set, runs once the network is built and before the
	// appliance's configuration is written: it may start fakes (inside
	// e.Net.Topo.Appliance) whose addresses Modify then puts into the
	// configuration.
	Prepare func(ctx context.Context, e *Env) error
	// ExtraAppliances runs that many more appliances, each in its own
	// namespace behind the GWLB (Net.Topo.Extra), with the same CA and
	// policy; the simulator places flows over all of them. Their records
	// go to their own log streams (ExtraLogStream) with CloudWatchFake,
	// else to their stdout (Extra[i].Records).
	ExtraAppliances int
	// ModifyExtra, if set, adjusts extra appliance i's configuration after
	// Modify did.
	ModifyExtra func(i int, c *config.Config)
}

// Env is a whole demo deployment: network, files, appliance, clients.
type Env struct {
	Opts    Options
	Net     *Network
	Files   Files
	Records *Records
	App     *Appliance
	// Clients are the client of VPC A (endpoint A) and of VPC B
	// (endpoint B); both have the address gwlbsim.ClientAddr.
	Clients [2]*Client
	// CloudWatch is the fake with Options.CloudWatchFake, else nil.
	CloudWatch *cwlfake.Server
	// Extra are the Options.ExtraAppliances, ExtraFiles their files.
	Extra      []*Appliance
	ExtraFiles []Files
	extraCW    []*http.Server
	ownDir     bool
	stopPoll   context.CancelFunc
	polled     chan struct{}
}

// CloudWatch Logs placement of the records with Options.CloudWatchFake.
const (
	LogGroup  = "/gwlbproxy/demo"
	LogStream = "demo-appliance"
)

// Start builds the network and files and starts the appliance.
func Start(ctx context.Context, o Options) (_ *Env, err error) {
	if o.Prefix == "" {
		o.Prefix = "gd"
	}
	if o.Progress == nil {
		o.Progress = func(string) {}
	}
	e := &Env{Opts: o, Records: NewRecords()}
	defer func() {
		if err != nil {
			_ = e.Close()
		}
	}()
	if o.Dir == "" {
		if o.Dir, err = os.MkdirTemp("", "gwlbproxy-demo-"); err != nil {
			return nil, err
		}
		e.ownDir = true
		e.Opts.Dir = o.Dir
	}
	o.Progress("building network namespaces, GWLB simulator and internet servers")
	if e.Net, err = NewNetworkSim(ctx, o.Mode, o.Prefix, o.Sim, o.ExtraAppliances); err != nil {
		return nil, err
	}
	if o.Prepare != nil {
		o.Progress("preparing the test's fakes")
		if err = o.Prepare(ctx, e); err != nil {
			return nil, fmt.Errorf("prepare: %w", err)
		}
	}
	modify := o.Modify
	if o.CloudWatchFake {
		o.Progress("starting the CloudWatch Logs fake in " + e.Net.Topo.Appliance.Name)
		endpoint, err := e.startCloudWatch(ctx)
		if err != nil {
			return nil, err
		}
		modify = func(c *config.Config) {
			cloudWatchConfig(c, endpoint, LogStream)
			if o.Modify != nil {
				o.Modify(c)
			}
		}
	}
	o.Progress("creating the appliance CA and configuration")
	if e.Files, err = MakeFiles(o.Dir, o.Mode, e.Net.Internet.CAPEM, modify); err != nil {
		return nil, err
	}
	roots, err := Roots(e.Files.ApplianceCA)
	if err != nil {
		return nil, err
	}
	roots.AddCert(e.Net.Internet.CACert)
	for i, name := range []string{"VPC A", "VPC B"} {
		e.Clients[i] = &Client{Name: name, NS: e.Net.Topo.Endpoints[i].Client, Roots: roots}
	}
	o.Progress("starting the appliance (gwlbproxy run) in " + e.Net.Topo.Appliance.Name)
	if err = e.StartAppliance(ctx); err != nil {
		return nil, err
	}
	for i, x := range e.Net.Topo.Extra {
		o.Progress("starting extra appliance " + strconv.Itoa(i) + " in " + x.NS.Name)
		if err = e.startExtra(ctx, i, x); err != nil {
			return nil, fmt.Errorf("extra appliance %d: %w", i, err)
		}
	}
	return e, nil
}

// ExtraLogStream is extra appliance i's log stream with CloudWatchFake.
func ExtraLogStream(i int) string { return fmt.Sprintf("%s-%d", LogStream, i+2) }

// cloudWatchConfig ships c's records to the CloudWatch fake at endpoint.
func cloudWatchConfig(c *config.Config, endpoint, stream string) {
	c.Logship.Sink = logship.SinkCloudWatch
	c.AWS.Endpoints.Logs = endpoint
	c.Logship.CloudWatch.Region = "us-east-1"
	c.Logship.CloudWatch.LogGroup = LogGroup
	c.Logship.CloudWatch.LogStream = stream
	c.Logship.CloudWatch.CreateGroup = true
	c.Logship.CloudWatch.PutTimeout = 5 * time.Second
	c.Logship.UnhealthyAge = 5 * time.Second
	c.Logship.Retry.MinBackoff = 100 * time.Millisecond
	c.Logship.Retry.MaxBackoff = time.Second
}

// startExtra writes extra appliance i's files (the first appliance's CA,
// its own address, spool and log stream) and starts it.
func (e *Env) startExtra(ctx context.Context, i int, x *gwlbsim.ExtraAppliance) error {
	dir := filepath.Join(e.Opts.Dir, fmt.Sprintf("app%d", i+2))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f := e.Files
	f.Dir, f.Config, f.ApplianceLog = dir, filepath.Join(dir, "gwlbproxy.yaml"), filepath.Join(dir, "appliance.log")
	c := ApplianceConfig(e.Opts.Mode, f)
	c.CA.CertFile, c.CA.KeyFile = e.Files.ApplianceCA, filepath.Join(filepath.Dir(e.Files.ApplianceCA), ca.KeyFileName)
	c.Proxy.UpstreamCABundle = e.Files.InternetCA
	c.InstanceID = fmt.Sprintf("demo-appliance-%d", i+2)
	c.Health.Listen = netip.AddrPortFrom(x.Addr, HealthPort).String()
	if e.CloudWatch != nil {
		// The same fake, served in this namespace too.
		var l net.Listener
		err := x.NS.Do(func() error {
			var err error
			l, err = net.Listen("tcp4", "127.0.0.1:0")
			return err
		})
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: e.CloudWatch, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(l) }()
		e.extraCW = append(e.extraCW, srv)
		cloudWatchConfig(&c, "http://"+l.Addr().String(), ExtraLogStream(i))
	}
	if e.Opts.Modify != nil {
		e.Opts.Modify(&c)
	}
	if e.Opts.ModifyExtra != nil {
		e.Opts.ModifyExtra(i, &c)
	}
	b, err := c.Marshal()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if _, err := config.Parse(b); err != nil {
		return fmt.Errorf("generated config: %w", err)
	}
	if err := os.WriteFile(f.Config, b, 0o644); err != nil {
		return err
	}
	e.ExtraFiles = append(e.ExtraFiles, f)
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	a, err := StartAppliance(sctx, e.Opts.Binary, x.NS.Name, f, NewRecords(), e.applianceEnv()...)
	if err != nil {
		return err
	}
	e.Extra = append(e.Extra, a)
	return nil
}

// applianceEnv is the environment of appliance children.
func (e *Env) applianceEnv() []string {
	if e.CloudWatch == nil {
		return nil
	}
	// Static keys for the fake: nothing asks instance metadata.
	return []string{"AWS_ACCESS_KEY_ID=demo", "AWS_SECRET_ACCESS_KEY=demo", "AWS_REGION=us-east-1", "AWS_EC2_METADATA_DISABLED=true"}
}

// StartAppliance starts (or restarts) the appliance and waits for ready.
func (e *Env) StartAppliance(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	a, err := StartAppliance(ctx, e.Opts.Binary, e.Net.Topo.Appliance.Name, e.Files, e.Records, e.applianceEnv()...)
	if err != nil {
		return err
	}
	e.App = a
	return nil
}

// Close stops the appliance and removes everything.
func (e *Env) Close() error {
	var errs []error
	for i, a := range e.Extra {
		select {
		case <-a.Done():
		default:
			if err := a.Stop(15 * time.Second); err != nil {
				errs = append(errs, fmt.Errorf("extra appliance %d: %w", i, err))
			}
		}
	}
	for _, srv := range e.extraCW {
		errs = append(errs, srv.Close())
	}
	if e.App != nil {
		select {
		case <-e.App.Done():
		default:
			if err := e.App.Stop(15 * time.Second); err != nil {
				errs = append(errs, fmt.Errorf("appliance: %w", err))
			}
		}
	}
	if e.stopPoll != nil {
		e.stopPoll()
		<-e.polled
	}
	if e.CloudWatch != nil {
		errs = append(errs, e.CloudWatch.Close())
	}
	if e.Net != nil {
		errs = append(errs, e.Net.Close())
	}
	if e.ownDir && e.Opts.Dir != "" {
		errs = append(errs, os.RemoveAll(e.Opts.Dir))
	}
	return errors.Join(errs...)
}

// EndpointOf names the endpoint id as records write it.
func EndpointOf(id uint64) string { return fmt.Sprintf("vpce-%017x", id) }

// applianceHTTP is an http.Client dialling from the appliance namespace
// (health and metrics listen there).
func (e *Env) applianceHTTP() *http.Client {
	return e.Net.Topo.Appliance.HTTPClient(20*time.Second, &net.Dialer{})
}

// HealthURL is where the appliance's health check answers.
func HealthURL() string {
	return "http://" + netip.AddrPortFrom(gwlbsim.ApplianceAddr, HealthPort).String() + "/"
}

// Health asks the appliance's health check.
func (e *Env) Health(ctx context.Context) (int, health.Report, error) {
	var rep health.Report
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, HealthURL(), nil)
	if err != nil {
		return 0, rep, err
	}
	resp, err := e.applianceHTTP().Do(req)
	if err != nil {
		return 0, rep, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return resp.StatusCode, rep, fmt.Errorf("health body: %w", err)
	}
	return resp.StatusCode, rep, nil
}

// Metrics scrapes the appliance's Prometheus endpoint into a map from
// "name{labels}" (as exposed) to value.
func (e *Env) Metrics(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+MetricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.applianceHTTP().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	m := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// SteerCounter is the packets counted by steering's nftables counter name
// (forwarded, quic_dropped, intercepted, ...), read from the metrics.
func (e *Env) SteerCounter(ctx context.Context, name string) (float64, error) {
	m, err := e.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := m[`gwlbproxy_steer_packets_total{counter="`+name+`"}`]
	if !ok {
		return 0, fmt.Errorf("metric gwlbproxy_steer_packets_total{counter=%q} not exposed", name)
	}
	return v, nil
}

// startCloudWatch serves a CloudWatch Logs fake on 127.0.0.1 inside the
// appliance namespace and moves what arrives there into Records.
func (e *Env) startCloudWatch(ctx context.Context) (string, error) {
	fake := cwlfake.New(cwlfake.Options{})
	var endpoint string
	err := e.Net.Topo.Appliance.Do(func() error {
		var err error
		endpoint, err = fake.Start("127.0.0.1:0")
		return err
	})
	if err != nil {
		return "", err
	}
	e.CloudWatch = fake
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.stopPoll, e.polled = cancel, make(chan struct{})
	go func() {
		defer close(e.polled)
		seen := 0
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
			evs := fake.Events(LogGroup, LogStream)
			for _, ev := range evs[min(seen, len(evs)):] {
				e.Records.Add([]byte(ev.Message))
			}
			seen = max(seen, len(evs))
		}
	}()
	return endpoint, nil
}
