package resolve

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Resolver. The zero value is not valid; start from
// DefaultConfig.
type Config struct {
	// Servers are the DNS servers asked, in order, as "ip" or "ip:port"
	// (port 53 when absent). Empty: the nameserver lines of ResolvConf
	// (on AWS the VPC resolver, the one the clients use too).
	Servers []string `yaml:"servers"`
	// ResolvConf is read when Servers is empty.
	ResolvConf string `yaml:"resolv_conf"`
	// Timeout bounds one lookup of a name (all servers, A and AAAA
	// together); each server gets an equal share. A caller never waits
	// longer than this for a name, however many callers want it.
	Timeout time.Duration `yaml:"timeout"`
	// MinTTL and MaxTTL clamp the TTL of positive answers: a floor spares
	// the resolver names with TTL 0 or 1, a ceiling bounds how long a
	// changed record is ignored.
	MinTTL time.Duration `yaml:"min_ttl"`
	MaxTTL time.Duration `yaml:"max_ttl"`
	// NegativeTTL caps how long "no such name" and "no addresses" are
	// cached (RFC 2308: the SOA's TTL and minimum, clamped to
	// MinTTL..NegativeTTL).
	NegativeTTL time.Duration `yaml:"negative_ttl"`
	// FailureTTL is how long a failed lookup (timeout, SERVFAIL, REFUSED,
	// unreachable server) is remembered, so that while the resolver is
	// down every connection for that name fails at once instead of
	// waiting Timeout.
	FailureTTL time.Duration `yaml:"failure_ttl"`
	// Retain keeps every address seen for a name for this long after its
	// TTL ran out: CDNs rotate answers, and a client may still use an
	// address its own (earlier) lookup returned.
	Retain time.Duration `yaml:"retain"`
	// RequeryInterval: when a destination is not among a name's cached
	// addresses, the name is re-resolved once before the answer counts as
	// a mismatch, unless it was resolved less than this long ago (so
	// mismatching clients cannot make the appliance query without bound).
	RequeryInterval time.Duration `yaml:"requery_interval"`
	// MaxNames bounds the cache; beyond it the least recently used of a
	// sample of names is evicted.
	MaxNames int `yaml:"max_names"`
	// MaxAddrs bounds the addresses kept per name (answers plus retained
	// ones); the oldest retained ones go first.
	MaxAddrs int `yaml:"max_addrs"`

	// MaxInflight caps lookups running at once (each is one name's A and
	// AAAA). Beyond it a new name fails at once (callers fail closed)
	// instead of queueing: a flood of random names under an allowed
	// wildcard cannot pile up work or exceed the VPC resolver's packet
	// rate for everyone (AWS allows 1024 packets/s per interface).
	MaxInflight int `yaml:"max_inflight"`

	// Registerer, when not nil, gets the resolver's metrics.
	Registerer prometheus.Registerer `yaml:"-"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		ResolvConf:      "/etc/resolv.conf",
		Timeout:         2 * time.Second,
		MinTTL:          5 * time.Second,
		MaxTTL:          time.Hour,
		NegativeTTL:     30 * time.Second,
		FailureTTL:      2 * time.Second,
		Retain:          15 * time.Minute,
		RequeryInterval: 2 * time.Second,
		MaxNames:        100000,
		MaxAddrs:        64,
		MaxInflight:     256,
	}
}

// Validate checks c; messages start with the yaml key.
func (c *Config) Validate() error {
	for i, s := range c.Servers {
		if _, err := serverAddr(s); err != nil {
			return fmt.Errorf("servers[%d]: %w", i, err)
		}
	}
	if len(c.Servers) == 0 && c.ResolvConf == "" {
		return fmt.Errorf("resolv_conf: empty while servers is empty")
	}
	durs := []struct {
		key    string
		v      time.Duration
		lo, hi time.Duration
	}{
		{"timeout", c.Timeout, 10 * time.Millisecond, time.Minute},
		{"min_ttl", c.MinTTL, 0, time.Hour},
		{"max_ttl", c.MaxTTL, time.Second, 7 * 24 * time.Hour},
		{"negative_ttl", c.NegativeTTL, 0, 24 * time.Hour},
		{"failure_ttl", c.FailureTTL, 0, time.Hour},
		{"retain", c.Retain, 0, 24 * time.Hour},
		{"requery_interval", c.RequeryInterval, 0, time.Hour},
	}
	for _, d := range durs {
		if d.v < d.lo || d.v > d.hi {
			return fmt.Errorf("%s: %v out of range %v..%v", d.key, d.v, d.lo, d.hi)
		}
	}
	if c.MinTTL > c.MaxTTL {
		return fmt.Errorf("min_ttl: %v above max_ttl %v", c.MinTTL, c.MaxTTL)
	}
	if c.MaxNames < 1 || c.MaxNames > 1<<24 {
		return fmt.Errorf("max_names: %d out of range 1..16777216", c.MaxNames)
	}
	if c.MaxInflight < 1 || c.MaxInflight > 65536 {
		return fmt.Errorf("max_inflight: %d out of range 1..65536", c.MaxInflight)
	}
	if c.MaxAddrs < 1 || c.MaxAddrs > 4096 {
		return fmt.Errorf("max_addrs: %d out of range 1..4096", c.MaxAddrs)
	}
	return nil
}

// serverAddr turns "ip" or "ip:port" (IPv6 bracketed with a port) into
// "ip:port".
func serverAddr(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return "", fmt.Errorf("%q: port 0", s)
		}
		return ap.String(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return "", fmt.Errorf("%q is not an IP address or ip:port", s)
	}
	return netip.AddrPortFrom(a, 53).String(), nil
}

func joinHostPort(host, port string) (string, error) {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return "", fmt.Errorf("nameserver %q is not an IP address", host)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		p = 53
	}
	return netip.AddrPortFrom(a.WithZone(""), uint16(p)).String(), nil
}
