package proxy

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestExampleConfigStrict(t *testing.T) {
	b, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Policy.Rules) != 3 || cfg.Policy.Rules[2].Ports[1].Hi != 8444 {
		t.Fatalf("%+v", cfg.Policy.Rules)
	}
	// The example spells out every default.
	def := DefaultConfig()
	if cfg.SpliceIdleTimeout != def.SpliceIdleTimeout || cfg.MaxConns != def.MaxConns || cfg.VerifiedTTL != def.VerifiedTTL {
		t.Fatal("example drifted from defaults")
	}
}

func TestValidateMessages(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.MaxConns = -1 }, "max_conns:"},
		{func(c *Config) { c.MaxConns = 10; c.MaxConnsPerClient = 11 }, "max_conns_per_client:"},
		{func(c *Config) { c.ProgressTimeout = 0 }, "progress_timeout:"},
		{func(c *Config) { c.DenyTLS = "x" }, "deny_tls:"},
		{func(c *Config) { c.HTTP2MaxStreams = 0 }, "http2_max_streams:"},
		{func(c *Config) { c.IdleTimeout = 0 }, "idle_timeout:"},
		{func(c *Config) { c.Policy.DefaultAction = "x" }, "policy.default_action:"},
		{func(c *Config) { c.SSRF.SelfRefresh = 0 }, "ssrf.self_refresh:"},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("got %v want prefix %q", err, tc.want)
		}
	}
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}
