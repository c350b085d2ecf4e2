package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"runtime/debug"
	"strconv"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/lifecycle"
)

// DefaultPath is where `gwlbproxy run` looks for its configuration.
const DefaultPath = "/etc/gwlbproxy/gwlbproxy.yaml"

// Config is the whole appliance configuration: one section per component.
type Config struct {
	// InstanceID names this appliance in records and the log stream; empty
	// means "ask IMDSv2, else the hostname".
	InstanceID string           `yaml:"instance_id"`
	Log        LogConfig        `yaml:"log"`
	Health     HealthConfig     `yaml:"health"`
	Metrics    MetricsConfig    `yaml:"metrics"`
	Drain      DrainConfig      `yaml:"drain"`
	Lifecycle  lifecycle.Config `yaml:"lifecycle"`
	Runtime    RuntimeConfig    `yaml:"runtime"`
	Components `yaml:",inline"`

	// issue 17: AWS is the one section for the region, instance metadata
	// and service endpoint overrides of every AWS client (awsenv).
	AWS awsenv.Config `yaml:"aws"`

	// Warnings are one-line notes from Parse (deprecated keys that still
	// work); `run` logs them at start and `check` prints them. Not YAML.
	Warnings []string `yaml:"-"`
}

// LogConfig selects the daemon's own log output (not the request records).
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// HealthConfig is the HTTP health check GWLB's target group probes.
type HealthConfig struct {
	Listen string `yaml:"listen"`
	// Mode "full" answers with a JSON body of counters; "simple" with an
	// empty body (for probes that only look at the status).
	Mode string `yaml:"mode"`
}

// MetricsConfig is the Prometheus endpoint. Empty Listen disables it.
type MetricsConfig struct {
	Listen string `yaml:"listen"`
}

// RuntimeConfig tunes the Go runtime for an appliance that owns its
// machine: collecting less often trades memory, which it has, for CPU on
// the request path (GOGC=400 measured +20 % keep-alive requests per
// CPU-second in the proxy benchmark). The GOGC and GOMEMLIMIT environment
// variables, when set, win.
type RuntimeConfig struct {
	GCPercent int `yaml:"gc_percent"`
	// MemoryLimitMiB is a soft heap limit; 0 means none.
	MemoryLimitMiB int `yaml:"memory_limit_mib"`
}

// Apply sets the collector's pace unless the environment already did.
func (rc RuntimeConfig) Apply() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(rc.GCPercent)
	}
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok && rc.MemoryLimitMiB > 0 {
		debug.SetMemoryLimit(int64(rc.MemoryLimitMiB) << 20)
	}
}

// DrainConfig governs graceful shutdown and scale-in.
type DrainConfig struct {
	// Deadline bounds how long in-flight flows and the log spool are given
	// after SIGTERM (or a terminating lifecycle state) before exit.
	Deadline time.Duration `yaml:"deadline"`
}

// Default returns the built-in defaults: what `run` uses with no file.
func Default() Config {
	return Config{
		Log:        LogConfig{Level: "info", Format: "text"},
		Health:     HealthConfig{Listen: ":80", Mode: "full"},
		Metrics:    MetricsConfig{Listen: "127.0.0.1:16081"},
		Drain:      DrainConfig{Deadline: 60 * time.Second},
		Lifecycle:  lifecycle.DefaultConfig(),
		Runtime:    RuntimeConfig{GCPercent: 400},
		Components: defaultComponents(),
		AWS:        awsenv.DefaultConfig(),
	}
}

// Parse decodes YAML over the defaults and validates the result.
func Parse(data []byte) (Config, error) {
	c := Default()
	root, err := parseDoc(data)
	if err != nil {
		return Config{}, oneLine{err}
	}
	var moved []movedKey
	if root != nil {
		if moved, err = extractAWSAliases(root); err != nil {
			return Config{}, oneLine{err}
		}
		if err := walk(root, reflect.ValueOf(&c).Elem(), ""); err != nil {
			return Config{}, oneLine{err}
		}
	}
	warning, err := c.applyAWSAliases(moved)
	if err != nil {
		return Config{}, oneLine{err}
	}
	if warning != "" {
		c.Warnings = append(c.Warnings, warning)
	}
	if err := c.Validate(); err != nil {
		return Config{}, oneLine{err}
	}
	return c, nil
}

// Load reads path. A missing file is not an error when missingOK is set: the
// defaults apply (that is how `run` behaves on a fresh machine).
func Load(path string, missingOK bool) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if missingOK && errors.Is(err, fs.ErrNotExist) {
			c := Default()
			return c, c.Validate()
		}
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	c, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Validate checks every section; the error names the first bad field.
func (c *Config) Validate() error {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return &FieldError{Path: "log.level", Msg: fmt.Sprintf("%q is not one of debug, info, warn, error", c.Log.Level)}
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return &FieldError{Path: "log.format", Msg: fmt.Sprintf("%q is not one of text, json", c.Log.Format)}
	}
	if err := checkListen(c.Health.Listen, false); err != nil {
		return &FieldError{Path: "health.listen", Msg: err.Error()}
	}
	switch c.Health.Mode {
	case "full", "simple":
	default:
		return &FieldError{Path: "health.mode", Msg: fmt.Sprintf("%q is not one of full, simple", c.Health.Mode)}
	}
	if err := checkListen(c.Metrics.Listen, true); err != nil {
		return &FieldError{Path: "metrics.listen", Msg: err.Error()}
	}
	if c.Drain.Deadline < 0 || c.Drain.Deadline > time.Hour {
		return &FieldError{Path: "drain.deadline", Msg: fmt.Sprintf("%s out of range 0..1h", c.Drain.Deadline)}
	}
	if c.Runtime.GCPercent < -1 || c.Runtime.GCPercent == 0 || c.Runtime.GCPercent > 10000 {
		return &FieldError{Path: "runtime.gc_percent", Msg: fmt.Sprintf("%d out of range 1..10000 (or -1 to turn the collector off)", c.Runtime.GCPercent)}
	}
	if c.Runtime.MemoryLimitMiB < 0 {
		return &FieldError{Path: "runtime.memory_limit_mib", Msg: "must not be negative"}
	}
	if err := prefix("lifecycle", c.Lifecycle.Validate()); err != nil {
		return err
	}
	if err := prefix("aws", c.AWS.Validate()); err != nil {
		return err
	}
	return c.Components.validate()
}

// checkListen accepts "host:port", ":port" and, when emptyOK, "".
func checkListen(s string, emptyOK bool) error {
	if s == "" {
		if emptyOK {
			return nil
		}
		return errors.New("must not be empty")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q: host must be an IP address", s)
		}
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q: port out of range 1..65535", s)
	}
	return nil
}

// prefix wraps a component's own validation error (whose message starts
// with the key relative to the component) with the section's path.
func prefix(section string, err error) error {
	if err == nil {
		return nil
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return &FieldError{Path: section + "." + fe.Path, Line: fe.Line, Msg: fe.Msg}
	}
	return fmt.Errorf("%s.%w", section, err)
}

// Marshal renders the effective configuration as YAML (for `check`).
func (c *Config) Marshal() ([]byte, error) {
	return yaml.Marshal(c)
}

// SlogLevel maps Log.Level to a slog level.
func (c *Config) SlogLevel() slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(c.Log.Level))
	return l
}
