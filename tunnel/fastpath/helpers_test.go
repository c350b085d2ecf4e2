//go:build linux

package fastpath

import "net/netip"

func testConfig() Config {
	return Config{Port: 6081, TTL: 64, MaxFlows: 1024, MaxTunnels: 8,
		AllowedSources: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/32"), netip.MustParsePrefix("2001:db8:ff::1/128")}}
}
