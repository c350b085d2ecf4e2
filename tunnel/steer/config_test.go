//go:build linux

package steer

import (
	"strings"
	"testing"
)

func TestDefaultConfigValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateNamesKey(t *testing.T) {
	for _, tc := range []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.EgressMode = "bridge" }, "egress_mode: "},
		{func(c *Config) { c.MarkBase = 0x47570001 }, "mark_base: "},
		{func(c *Config) { c.RouteTableBase = 254 }, "route_table_base: "},
		{func(c *Config) { c.TLSPorts = []uint16{80} }, "tls_ports: "},
		{func(c *Config) { c.TLSListenPort = c.HTTPListenPort }, "tls_listen_port: "},
		{func(c *Config) { c.ConntrackZone = 0 }, "conntrack_zone: "},
		{func(c *Config) { c.SysctlInterval = 0 }, "sysctl_interval: "},
		{func(c *Config) { c.RulePriority = 0 }, "rule_priority: "},
		{func(c *Config) { c.EgressInterface = "averyveryverylongname" }, "egress_interface: "},
	} {
		c := DefaultConfig()
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("want %q..., got %v", tc.want, err)
		}
	}
}
