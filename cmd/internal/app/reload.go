package app

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
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
}

// policyReloader re-reads the configuration file into the proxy.
type policyReloader struct {
	path string
	px   *proxy.Proxy
	log  *slog.Logger

	reloads, failures prometheus.Counter

	mu      sync.Mutex
	running config.Config // as started; restart keys are compared with it
	status  PolicyStatus
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
	r.status = PolicyStatus{Version: px.PolicyVersion(), Source: running.Proxy.Policy.Source.Source, LoadedAt: time.Now().UTC()}
	return r
}

// Status is the health body's view.
func (r *policyReloader) Status() PolicyStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.RestartNeeded = append([]string(nil), s.RestartNeeded...)
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
	v, err := r.px.Reload(c.Proxy, "")
	if err != nil {
		return r.fail(fmt.Errorf("config %s: proxy.%w", r.path, err))
	}
	restart := restartKeys(r.running, c)
	if len(restart) > 0 {
		r.log.Warn("reload: these keys changed but take effect only at the next restart", "keys", restart)
	}
	r.status.RestartNeeded = restart
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
func restartKeys(running, c config.Config) []string {
	strip := func(c config.Config) config.Config {
		c.Proxy.Policy = policy.Config{Source: c.Proxy.Policy.Source}
		c.Proxy.Binding = proxy.BindingConfig{}
		c.Proxy.UpstreamCABundle = ""
		c.Proxy.SSRF = ssrf.Config{SelfRefresh: c.Proxy.SSRF.SelfRefresh}
		return c
	}
	return proxy.DiffKeys(strip(running), strip(c))
}
