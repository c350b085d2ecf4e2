// Package app wires the appliance together: tunnel, steering, proxy, CA and
// log shipper, the health verdict and metrics, readiness and shutdown. It is
// what `gwlbproxy run` executes, in production and in the demo alike.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gwlbproxy/gwlbproxy/ca"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/buildinfo"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/health"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/lifecycle"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/policysource"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/sdnotify"
	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/logship/evetail"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/mirror"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/resolve"
	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flowlog"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// Options are Run's optional inputs.
type Options struct {
	// ConfigPath is the file c was read from; a value on Reload makes Run
	// read it again and apply its policy (reload.go). Empty: no reloads.
	ConfigPath string
	// Reload receives a value per reload request (SIGHUP).
	Reload <-chan struct{}
}

// Run runs the appliance until ctx is cancelled, then drains and removes
// everything it installed. Startup failures are returned with the component
// named; whatever was already installed is removed first.
func Run(ctx context.Context, c config.Config, log *slog.Logger, opts Options) (err error) {
	var cleanup cleanups
	defer func() {
		if cerr := cleanup.run(log); err == nil {
			err = cerr
		}
	}()

	c.Runtime.Apply()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildinfo.Collector())
	hs := health.New(c.Health.Mode)

	// issue 17: one AWS environment (SDK config, IMDS client, instance
	// id, region) for every consumer below, loaded on first use.
	env, err := awsenv.New(c.AWS, log.With("component", "aws"))
	if err != nil {
		return err
	}
	instanceID := c.InstanceID
	if instanceID == "" {
		instanceID = discoverInstanceID(ctx, env)
	}
	log = log.With("instance", instanceID)

	// Background work that must outlive startup but end with Run.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()

	remotePolicy := c.Proxy.Policy.Source.Source == policy.SourceS3 || c.Proxy.Policy.Source.Source == policy.SourceSSM

	// Scale-in: a terminating lifecycle state drains the appliance as
	// SIGTERM does, and the hook is completed once the drain is over.
	var lc *lifecycle.Watcher
	terminating := make(chan struct{})
	if c.Lifecycle.Enabled {
		asCfg, err := env.Config(ctx, awsenv.AutoScaling)
		if err != nil {
			return fmt.Errorf("lifecycle: %w", err)
		}
		lc = lifecycle.New(c.Lifecycle, env, lifecycle.NewClient(asCfg), log.With("component", "lifecycle"))
		go func() {
			if lc.Wait(bg) == nil {
				close(terminating)
			}
		}()
	}
	var caCfg aws.Config
	if c.CA.Source != ca.SourceFiles { // kms and secretsmanager are awsenv's service names
		if caCfg, err = env.Config(ctx, c.CA.Source); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
	}
	authority, err := ca.Open(bg, c.CA, caCfg, log.With("component", "ca"))
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	minter := ca.NewMinter(authority, c.CA.MinterOptions(log.With("component", "ca")), reg)

	shipCfg := c.Logship
	shipCfg.InstanceID = instanceID
	if shipCfg.Sink == logship.SinkCloudWatch {
		if shipCfg.CloudWatch.AWS, err = env.Config(ctx, awsenv.Logs); err != nil {
			return fmt.Errorf("logship: %w", err)
		}
	}
	shipper, err := logship.New(bg, shipCfg, log.With("component", "logship"), reg)
	if err != nil {
		return fmt.Errorf("logship: %w", err)
	}
	shipperOpen := true
	// issue 19: Suricata's alerts into the same log group.
	if ic := c.Logship.IDSAlerts; ic.Enabled {
		ic.InstanceID = instanceID
		tl, err := evetail.New(ic, shipper, log.With("component", "evetail"))
		if err != nil {
			return fmt.Errorf("logship.ids_alerts: %w", err)
		}
		go func() {
			if err := tl.Run(bg); err != nil {
				log.Error("ids alert tailer stopped", "err", err)
			}
		}()
	}
	defer func() { // startup failed after the shipper opened: keep its spool
		if shipperOpen {
			_ = shipper.Close(context.Background())
		}
	}()
	hs.Add(health.Check{Name: "logship", Health: shipper.Health, Stats: func() any { return shipper.Stats() }})

	// One resolver and cache for the appliance: destination binding and the
	// network policy's domain rules see the same answers.
	rcfg := c.Proxy.Binding.Resolver
	rcfg.Registerer = reg
	resolver, err := resolve.New(rcfg)
	if err != nil {
		return fmt.Errorf("proxy config: binding.%w", err)
	}
	if servers, err := resolver.ServerList(); err != nil {
		log.Error("resolver has no DNS server: name-based allows (binding) and domain rules fail closed until this is fixed", "err", err)
	} else {
		log.Info("resolver", "servers", servers, "binding", c.Proxy.Binding.Mode)
	}

	st, err := steer.New(c.SteerConfig(), log.With("component", "steer"), reg)
	if err != nil {
		return fmt.Errorf("steer: %w", err)
	}
	st.SetResolver(resolver)
	st.SetAWS(env)
	if err := st.Start(bg); err != nil {
		return fmt.Errorf("steer: %w", err)
	}
	cleanup.add("steer", st.Close)
	hs.Add(health.Check{Name: "steer", Health: st.Health, Stats: func() any { return st.Stats() }})

	// issue 15: a record per forwarded flow (and per denied attempt),
	// through the same shipper and spool as the request records.
	var flows *flowlog.Logger
	if c.FlowRecords.Enabled {
		fcfg, fs := c.FlowRecords, st.FlowSource()
		fcfg.MarkBase, fcfg.MarkMask, fcfg.LogGroup, fcfg.InterceptPorts = fs.MarkBase, fs.MarkMask, fs.LogGroup, fs.InterceptPorts
		flows, err = flowlog.New(fcfg, st, shipper, instanceID, log.With("component", "flowlog"), reg)
		if err != nil {
			return fmt.Errorf("flow_records: %w", err)
		}
		if err := flows.Start(bg); err != nil {
			return fmt.Errorf("flow_records: %w", err)
		}
		cleanup.add("flow records", flows.Close)
		hs.Add(health.Check{Name: "flowlog", Health: flows.Health, Stats: func() any { return flows.Stats() }})
	}

	// Self-healing: a listener whose accept fails for good is re-opened
	// by steer (tunnel/steer/relisten.go) instead of leaving interception
	// down until restart.
	ls, err := st.ListenAll(ctx)
	if err != nil {
		return fmt.Errorf("proxy listeners: %w", err)
	}
	cleanup.add("proxy listeners", ls.Close)
	// issue 19: the decryption mirror's tap device, when turned on.
	var mir *mirror.Mirror
	if c.Proxy.Mirror.Enabled {
		if mir, err = mirror.Open(c.Proxy.Mirror); err != nil {
			return fmt.Errorf("proxy.mirror: %w", err)
		}
		cleanup.add("mirror", mir.Close)
		reg.MustRegister(mir.Collectors()...)
		log.Info("decryption mirror on", "interface", c.Proxy.Mirror.Interface, "mtu", c.Proxy.Mirror.MTU)
	}
	// A fleet policy (s3/ssm) replaces the file's rules: the source's
	// current document, else its last good copy, else deny everything.
	var src *policysource.Source
	srcVersion := ""
	if remotePolicy {
		pcfg, err := env.Config(ctx, c.Proxy.Policy.Source.Source) // s3 or ssm
		if err != nil {
			return fmt.Errorf("proxy.policy: %w", err)
		}
		src = policysource.New(c.Proxy.Policy.Source, newFetcher(pcfg, c.Proxy.Policy.Source), log.With("component", "policy"))
		c.Proxy.Policy, srcVersion = src.Start(ctx, 15*time.Second)
	}
	px, err := proxy.New(c.Proxy, proxy.Deps{
		Certs:             minter,
		Recorder:          shipper,
		EndpointOf:        st.EndpointOf,
		DialUpstream:      st.DialUpstream,
		UpstreamPerClient: c.Steer.EgressMode == steer.EgressTunnel,
		// Fail closed on a full spool only (Health is also red for old
		// unacked records, which the spool absorbs).
		Admit:      shipper.Admit,
		InstanceID: instanceID,
		Binder:     resolver,
		Mirror:     mir,
	}, log.With("component", "proxy"), reg)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	// One SSRF guard for the appliance: steer's DialUpstream checks again
	// with the proxy's (one list; the proxy refreshes the own addresses).
	st.UseCheck(px.CheckDestination)
	var serving sync.WaitGroup
	serve := func(kind string, l net.Listener, fn func(net.Listener) error) {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := fn(l); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Error("proxy listener stopped", "kind", kind, "addr", l.Addr(), "err", err)
			}
		}()
	}
	for _, l := range ls.HTTP {
		serve("http", l, px.ServeHTTP)
	}
	for _, l := range ls.TLS {
		serve("tls", l, px.ServeTLS)
	}
	reloader := newPolicyReloader(opts.ConfigPath, c, px, log.With("component", "policy"), reg)
	reloader.net = st // issue 15: reloads swap the network policy too
	// Healthy unless failing closed for want of any policy: a refused
	// reload leaves the previous policy enforced; the body says so
	// (last_error, reload_failures).
	policyHealth := func() error { return nil }
	if src != nil {
		reloader.source = src
		if err := reloader.applySource(c.Proxy.Policy, srcVersion); err != nil {
			return fmt.Errorf("policy: %w", err)
		}
		src.Apply = reloader.applySource
		policyHealth = src.Healthy
		go src.Run(bg)
	}
	hs.Add(health.Check{Name: "policy", Health: policyHealth, Stats: func() any { return reloader.Status() }})
	if opts.ConfigPath != "" && opts.Reload != nil {
		go func() {
			for {
				select {
				case <-bg.Done():
					return
				case <-opts.Reload:
					log.Info("reload requested", "config", opts.ConfigPath)
					_ = reloader.Reload()
				}
			}
		}()
	}
	hs.Add(health.Check{
		Name:   "proxy",
		Health: func() error { return errors.Join(px.Health(), ls.Health()) },
		Stats: func() any {
			return struct {
				proxy.Stats
				ListenerReopens uint64 `json:"listener_reopens"`
			}{px.Stats(), ls.Reopens()}
		},
	})

	td, err := tunnel.New(c.Tunnel, log.With("component", "tunnel"), reg, st)
	if err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	tunnelDone := make(chan error, 1)
	tctx, stopTunnel := context.WithCancel(context.WithoutCancel(ctx))
	defer stopTunnel()
	go func() { tunnelDone <- td.Run(tctx) }()
	select {
	case <-td.Ready():
	case err := <-tunnelDone:
		return fmt.Errorf("tunnel: %w", err)
	case <-ctx.Done():
		stopTunnel()
		<-tunnelDone
		return nil
	}
	hs.Add(health.Check{Name: "tunnel", Health: td.Health, Stats: func() any { return td.Stats() }})

	healthSrv, err := listenHTTP(c.Health.Listen, withPaths(hs))
	if err != nil {
		return fmt.Errorf("health.listen: %w", err)
	}
	cleanup.add("health server", healthSrv.Close)
	if c.Metrics.Listen != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		msrv, err := listenHTTP(c.Metrics.Listen, mux)
		if err != nil {
			return fmt.Errorf("metrics.listen: %w", err)
		}
		cleanup.add("metrics server", msrv.Close)
	}

	log.Info("gwlbproxy ready",
		"geneve", netip.AddrPortFrom(c.Tunnel.Listen, c.Tunnel.Port),
		"egress_mode", c.Steer.EgressMode, "health", c.Health.Listen, "metrics", c.Metrics.Listen)
	_ = sdnotify.Notify(sdnotify.Ready)
	go watchdog(bg, td.Health)

	select {
	case <-ctx.Done():
	case <-terminating:
	case err := <-tunnelDone:
		return fmt.Errorf("tunnel stopped: %w", err)
	}

	// Drain: tell GWLB (503) and systemd, let in-flight requests finish up
	// to the deadline, then take the data path down.
	log.Info("draining", "deadline", c.Drain.Deadline)
	_ = sdnotify.Notify(sdnotify.Stopping)
	hs.SetDraining(true)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.Drain.Deadline)
	defer cancel()
	if err := px.Shutdown(dctx); err != nil {
		log.Warn("proxy drain incomplete", "err", err)
	}
	ls.Close()
	serving.Wait()
	waitTunnelsQuiet(dctx, td, log)
	stopTunnel()
	if err := <-tunnelDone; err != nil {
		log.Warn("tunnel shutdown", "err", err)
	}
	if flows != nil { // its last records and summary go into the spool
		if err := flows.Close(); err != nil {
			log.Warn("flow records shutdown", "err", err)
		}
	}
	// Last: every record the proxy wrote is in the spool; ship what the
	// remaining deadline allows, the rest waits in the spool for next start.
	shipperOpen = false
	if err := shipper.Close(dctx); err != nil {
		log.Warn("log spool not fully drained; the rest ships at next start", "err", err)
	}
	select {
	case <-terminating:
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := lc.Complete(cctx, instanceID); err != nil {
			log.Error("scale-in hook not completed; the group's heartbeat timeout will end it", "err", err)
		}
	default:
	}
	log.Info("stopped")
	return nil
}

// waitTunnelsQuiet keeps forwarded (non-proxied) flows served after the
// health check turned 503 until no tunnel has carried a packet for a
// couple of seconds, or the drain deadline.
func waitTunnelsQuiet(ctx context.Context, td *tunnel.Daemon, log *slog.Logger) {
	const quiet = 2.0 // seconds without a packet in any tunnel
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		busy := 0
		for _, ts := range td.Stats().Tunnels {
			if ts.IdleSeconds < quiet {
				busy++
			}
		}
		if busy == 0 {
			return
		}
		select {
		case <-ctx.Done():
			log.Warn("drain deadline reached with tunnels still carrying traffic", "tunnels", busy)
			return
		case <-t.C:
		}
	}
}

// discoverInstanceID asks the AWS environment for the instance id (IMDSv2,
// briefly): outside EC2 the host name names the appliance instead.
func discoverInstanceID(ctx context.Context, env *awsenv.Env) string {
	if id, err := env.InstanceID(ctx); err == nil {
		return id
	}
	h, _ := os.Hostname()
	return h
}

// withPaths answers the health check on / and /healthz (GWLB's target
// group path is configurable; both are common).
func withPaths(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	return mux
}

// listenHTTP starts an HTTP server with conservative timeouts.
func listenHTTP(addr string, h http.Handler) (*http.Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	go func() { _ = srv.Serve(l) }()
	return srv, nil
}

// watchdog pings systemd's watchdog while the packet workers are alive, so
// a wedged data path is restarted. It follows liveness, not the health
// verdict: a restart cannot fix a CloudWatch outage or a full spool, and
// must not be tried while GWLB is draining flows away on a 503.
func watchdog(ctx context.Context, alive func() error) {
	iv := sdnotify.WatchdogInterval()
	if iv == 0 {
		return
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if alive() == nil {
				_ = sdnotify.Notify(sdnotify.Watchdog)
			}
		}
	}
}

// cleanups runs undo steps in reverse order of installation.
type cleanups struct {
	steps []struct {
		name string
		fn   func() error
	}
}

func (c *cleanups) add(name string, fn func() error) {
	c.steps = append(c.steps, struct {
		name string
		fn   func() error
	}{name, fn})
}

func (c *cleanups) run(log *slog.Logger) error {
	var errs []error
	for i := len(c.steps) - 1; i >= 0; i-- {
		s := c.steps[i]
		if err := s.fn(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("cleanup", "step", s.name, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
		}
	}
	return errors.Join(errs...)
}
