package app

import (
	"context"
	"fmt"

	"log/slog"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/policysource"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/ssrf"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// Reloading: SIGHUP (what `systemctl reload` sends through the unit's
// ExecReload) makes the daemon read its configuration file again. The
// policy part (proxy.policy, proxy.ssrf, proxy.binding,
// proxy.upstream_ca_bundle) is validated and swapped into the running
// proxy; every other key needs a restart and is named as such in the log.
// A file that does not validate leaves the policy in force untouched: one
// error line naming the field, the failure counter, and the health body's
// "policy" check say so, but the verdict stays healthy (the old policy is
// still enforced, so taking the appliance out of service would only hurt).
//
// The network policy (steer.network_policy: rules, default_action, whose
// empty value follows proxy.policy.default_action, and domain sets) is
// reloaded too, first: steer swaps the whole nftables table in one
// transaction and re-evaluates established forwarded flows (see
// tunnel/steer/npreload.go). If the kernel refuses it, nothing changed and
// the reload fails naming steer.network_policy; if the proxy part then
// fails, the previous network policy is put back. network_policy.log_group
// needs a restart (the flow logger is bound to it).

// PolicyStatus is the "policy" check's stats in the health body.
type PolicyStatus struct {
	// Version is the policy_version in force.
	Version string `json:"policy_version"`
	// NetworkVersion is the network policy's version in force (flow
	// records' policy_version).
	NetworkVersion string `json:"network_policy_version,omitempty"`
	// LastNetworkReload is what the last network policy change did to
	// established flows.
	LastNetworkReload *steer.NetReload `json:"last_network_reload,omitempty"`
	// Source is where the policy comes from (proxy.policy.source).
	Source string `json:"source"`
	// LoadedAt is when the policy in force was loaded.
	LoadedAt time.Time `json:"loaded_at"`
	// Reloads and Failures count reload attempts that changed the policy
	// and that failed.
	Reloads  uint64 `json:"reloads"`
	Failures uint64 `json:"reload_failures"`
	// LastError is the last failed reload's error, cleared by the next
	// successful one; LastErrorAt when it happened.
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
	// RestartNeeded lists keys changed in the file that take effect only
	// at the next start.
	RestartNeeded []string `json:"restart_needed,omitempty"`
	// Fetch is the s3/ssm source's state.
	Fetch *policysource.Status `json:"fetch,omitempty"`
}

func sourceName(sc policy.SourceConfig) string {
	switch sc.Source {
	case policy.SourceS3:
		return "s3://" + sc.S3.Bucket + "/" + sc.S3.Key
	case policy.SourceSSM:
		return "ssm:" + sc.SSM.Parameter
	}
	return "file"
}

// policyReloader re-reads the configuration file into the proxy.
type policyReloader struct {
	path string
	px   *proxy.Proxy
	log  *slog.Logger

	reloads, failures prometheus.Counter

	// source, when the policy comes from s3/ssm: its rules replace the
	// file's on every reload.
	source *policysource.Source

	// net is steering's network policy, reloaded with the proxy's
	// policy (nil: not reloaded).
	net networkPolicy

	mu       sync.Mutex
	running  config.Config // as started; restart keys are compared with it
	file     proxy.Config  // the proxy section last loaded from the file
	fileFull config.Config // the whole file last loaded (network policy, defaults)
	status   PolicyStatus
}

// networkPolicy is what the reloader needs of *steer.Steerer.
type networkPolicy interface {
	NetworkPolicy() steer.NetworkPolicy
	SetNetworkPolicy(ctx context.Context, np steer.NetworkPolicy) (steer.NetReload, error)
	PolicyVersion() string
}

// netReloadTimeout bounds a network policy swap (resolving new domains).
const netReloadTimeout = 30 * time.Second

// setNetwork puts the network policy of c in force. It returns whether it
// changed and the policy it replaced (for a rollback).
func (r *policyReloader) setNetwork(c config.Config) (bool, steer.NetworkPolicy, error) {
	if r.net == nil {
		return false, steer.NetworkPolicy{}, nil
	}
	old := r.net.NetworkPolicy()
	ctx, cancel := context.WithTimeout(context.Background(), netReloadTimeout)
	defer cancel()
	res, err := r.net.SetNetworkPolicy(ctx, c.SteerConfig().NetworkPolicy)
	if err != nil {
		return false, old, fmt.Errorf("steer.%w", err)
	}
	if res.LogGroupKept {
		r.log.Warn("reload: steer.network_policy.log_group changed; takes effect only at the next restart")
	}
	if res.Changed {
		r.status.LastNetworkReload = &res
		r.log.Info("reload: new network policy in force", "network_policy_version", res.Version,
			"flows_kept", res.FlowsKept, "flows_moved", res.FlowsMoved, "flows_cut", res.FlowsCut)
	}
	return res.Changed, old, nil
}

// rollbackNetwork puts old back after the proxy part of a reload failed.
func (r *policyReloader) rollbackNetwork(old steer.NetworkPolicy) {
	ctx, cancel := context.WithTimeout(context.Background(), netReloadTimeout)
	defer cancel()
	if _, err := r.net.SetNetworkPolicy(ctx, old); err != nil {
		r.log.Error("reload: putting the previous network policy back failed; the new one stays in force", "err", err)
	}
}

// applySource puts a policy fetched from the source in force, with the
// rest of the proxy section as last loaded from the file.
func (r *policyReloader) applySource(pc policy.Config, version string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg := r.file
	cfg.Policy = pc
	prev := r.status.Version
	// The network policy's default may follow the fleet policy's.
	full := r.fileFull
	full.Proxy.Policy = pc
	netChanged, oldNet, err := r.setNetwork(full)
	if err != nil {
		return r.fail(fmt.Errorf("policy from %s: %w", r.status.Source, err))
	}
	v, err := r.px.Reload(cfg, version)
	if err != nil {
		if netChanged {
			r.rollbackNetwork(oldNet)
		}
		return r.fail(fmt.Errorf("policy from %s: %w", r.status.Source, err))
	}
	if v != prev || netChanged {
		r.reloads.Inc()
		r.status.Reloads++
		r.status.Version, r.status.LoadedAt = v, time.Now().UTC()
	}
	return nil
}

func newPolicyReloader(path string, running config.Config, px *proxy.Proxy, log *slog.Logger, reg prometheus.Registerer) *policyReloader {
	r := &policyReloader{
		path: path, px: px, log: log, running: running,
		reloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gwlbproxy_policy_reloads_total",
			Help: "Policy reloads that put a new policy in force.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gwlbproxy_policy_reload_failures_total",
			Help: "Policy reloads refused (invalid or unreadable policy); the previous policy stayed in force.",
		}),
	}
	if reg != nil {
		reg.MustRegister(r.reloads, r.failures)
	}
	r.file = running.Proxy
	r.fileFull = running
	r.status = PolicyStatus{Version: px.PolicyVersion(), Source: sourceName(running.Proxy.Policy.Source), LoadedAt: time.Now().UTC()}
	return r
}

// Status is the health body's view.
func (r *policyReloader) Status() PolicyStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.RestartNeeded = append([]string(nil), s.RestartNeeded...)
	if r.net != nil {
		s.NetworkVersion = r.net.PolicyVersion()
	}
	if r.source != nil {
		st := r.source.Status()
		s.Fetch = &st
	}
	return s
}

// Reload reads the file again and applies its policy. It returns the
// error it logged, if any.
func (r *policyReloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, err := config.Load(r.path, false)
	if err != nil {
		return r.fail(err)
	}
	prev := r.status.Version
	srcVersion := ""
	if r.source != nil {
		// The fleet policy stays the source's; the file gives the rest.
		c.Proxy.Policy, srcVersion = r.source.Current()
	}
	// The network policy first: if the kernel refuses it nothing
	// changed anywhere.
	netChanged, oldNet, err := r.setNetwork(c)
	if err != nil {
		return r.fail(fmt.Errorf("config %s: %w", r.path, err))
	}
	v, err := r.px.Reload(c.Proxy, srcVersion)
	if err != nil {
		if netChanged {
			r.rollbackNetwork(oldNet)
		}
		return r.fail(fmt.Errorf("config %s: proxy.%w", r.path, err))
	}
	restart := restartKeys(r.running, c)
	if len(restart) > 0 {
		r.log.Warn("reload: these keys changed but take effect only at the next restart", "keys", restart)
	}
	r.status.RestartNeeded = restart
	r.file = c.Proxy
	r.fileFull = c
	r.status.LastError, r.status.LastErrorAt = "", nil
	if v != prev || netChanged {
		r.reloads.Inc()
		r.status.Reloads++
		r.status.Version, r.status.LoadedAt = v, time.Now().UTC()
		r.log.Info("reload: new policy in force", "policy_version", v, "previous", prev, "rules", len(c.Proxy.Policy.Rules), "network_policy_changed", netChanged)
	} else {
		r.log.Info("reload: policy unchanged", "policy_version", v)
	}
	return nil
}

func (r *policyReloader) fail(err error) error {
	r.failures.Inc()
	now := time.Now().UTC()
	r.status.Failures++
	r.status.LastError, r.status.LastErrorAt = err.Error(), &now
	r.log.Error("reload refused, previous policy still in force", "policy_version", r.status.Version, "err", err)
	return err
}

// restartKeys names the keys that differ between the running config and
// c, other than the ones Reload applies.
// The resolver's settings (proxy.binding.servers, TTLs, cache sizes) are
// among them: the app builds one resolver for destination binding and the
// network policy's domain rules at start (Deps.Binder), which Reload keeps.
func restartKeys(running, c config.Config) []string {
	strip := func(c config.Config) config.Config {
		c.Proxy.Policy = policy.Config{Source: c.Proxy.Policy.Source}
		c.Proxy.Binding = proxy.BindingConfig{Resolver: c.Proxy.Binding.Resolver}
		c.Proxy.UpstreamCABundle = ""
		c.Proxy.SSRF = ssrf.Config{SelfRefresh: c.Proxy.SSRF.SelfRefresh}
		// Reloaded by steer, except the NFLOG group.
		c.Steer.NetworkPolicy = steer.NetworkPolicy{LogGroup: c.Steer.NetworkPolicy.LogGroup}
		return c
	}
	return proxy.DiffKeys(strip(running), strip(c))
}

// newFetcher is the fetcher for a remote source.
func newFetcher(awsCfg aws.Config, sc policy.SourceConfig) policysource.Fetcher {
	if sc.Source == policy.SourceSSM {
		return &policysource.SSM{Client: policysource.NewSSMClient(awsCfg, sc), Parameter: sc.SSM.Parameter}
	}
	return &policysource.S3{Client: policysource.NewS3Client(awsCfg, sc), Bucket: sc.S3.Bucket, Key: sc.S3.Key}
}
