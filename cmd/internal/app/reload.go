package app

import (
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

// PolicyStatus is the "policy" check's stats in the health body.
type PolicyStatus struct {
	// Version is the policy_version in force.
	Version string `json:"policy_version"`
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

	mu      sync.Mutex
	running config.Config // as started; restart keys are compared with it
	file    proxy.Config  // the proxy section last loaded from the file
	status  PolicyStatus
}

// applySource puts a policy fetched from the source in force, with the
// rest of the proxy section as last loaded from the file.
func (r *policyReloader) applySource(pc policy.Config, version string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg := r.file
	cfg.Policy = pc
	prev := r.status.Version
	v, err := r.px.Reload(cfg, version)
	if err != nil {
		return r.fail(fmt.Errorf("policy from %s: %w", r.status.Source, err))
	}
	if v != prev {
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
	r.status = PolicyStatus{Version: px.PolicyVersion(), Source: sourceName(running.Proxy.Policy.Source), LoadedAt: time.Now().UTC()}
	return r
}

// Status is the health body's view.
func (r *policyReloader) Status() PolicyStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.RestartNeeded = append([]string(nil), s.RestartNeeded...)
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
	v, err := r.px.Reload(c.Proxy, srcVersion)
	if err != nil {
		return r.fail(fmt.Errorf("config %s: proxy.%w", r.path, err))
	}
	restart := restartKeys(r.running, c)
	if len(restart) > 0 {
		r.log.Warn("reload: these keys changed but take effect only at the next restart", "keys", restart)
	}
	r.status.RestartNeeded = restart
	r.file = c.Proxy
	r.status.LastError, r.status.LastErrorAt = "", nil
	if v != prev {
		r.reloads.Inc()
		r.status.Reloads++
		r.status.Version, r.status.LoadedAt = v, time.Now().UTC()
		r.log.Info("reload: new policy in force", "policy_version", v, "previous", prev, "rules", len(c.Proxy.Policy.Rules))
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
