package config

import (
	"net/netip"

	"github.com/gwlbproxy/gwlbproxy/ca"
	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flowlog"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// Components holds the per-component sections. Each component owns its
// Config type, defaults and validation; this file only composes them.
type Components struct {
	Tunnel  tunnel.Config  `yaml:"tunnel"`
	Steer   steer.Config   `yaml:"steer"`
	Proxy   proxy.Config   `yaml:"proxy"`
	CA      ca.Config      `yaml:"ca"`
	Logship logship.Config `yaml:"logship"`
	// FlowRecords: a record per forwarded flow (issue 15).
	FlowRecords flowlog.Config `yaml:"flow_records"`
}

// vpcPrivateRanges is the default for tunnel.allowed_sources: GWLB always
// sends from inside the VPC, so GENEVE from a public address is never
// GWLB's. Operators should narrow it to the GWLB subnets.
var vpcPrivateRanges = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
}

func defaultComponents() Components {
	t := tunnel.DefaultConfig()
	t.AllowedSources = append([]netip.Prefix(nil), vpcPrivateRanges...)
	return Components{
		Tunnel:  t,
		Steer:   steer.DefaultConfig(),
		Proxy:   proxy.DefaultConfig(),
		CA:      ca.DefaultConfig(),
		Logship: logship.DefaultConfig(),

		FlowRecords: flowlog.DefaultConfig(),
	}
}

// SteerConfig is the steer section with what steer needs from other
// sections: the GENEVE port (tunnel.port) and GWLB's subnets
// (tunnel.allowed_sources) its notrack_geneve rules match.
func (c *Components) SteerConfig() steer.Config {
	s := c.Steer
	s.GenevePort = c.Tunnel.Port
	s.GeneveSources = c.Tunnel.AllowedSources
	s.MaxTunnels = c.Tunnel.MaxTunnels
	// issue 15: an unset network_policy.default_action follows the proxy
	// policy's default, so a deny-by-default proxy is deny-by-default on
	// every port and protocol, not only on the intercepted ones.
	if s.NetworkPolicy.DefaultAction == "" {
		s.NetworkPolicy.DefaultAction = steer.NetDeny
		if c.Proxy.Policy.DefaultAction != policy.Deny {
			s.NetworkPolicy.DefaultAction = steer.NetAllow
		}
	}
	return s
}

func (c *Components) validate() error {
	if err := prefix("tunnel", c.Tunnel.Validate()); err != nil {
		return err
	}
	sc := c.SteerConfig()
	if err := prefix("steer", sc.Validate()); err != nil {
		return err
	}
	if err := prefix("proxy", c.Proxy.Validate()); err != nil {
		return err
	}
	if err := prefix("ca", c.CA.Validate()); err != nil {
		return err
	}
	if err := prefix("flow_records", c.FlowRecords.Validate()); err != nil {
		return err
	}
	return prefix("logship", c.Logship.Validate())
}
