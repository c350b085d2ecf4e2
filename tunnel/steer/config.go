//go:build linux

package steer

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

// Egress modes.
const (
	// EgressNAT (two-arm): non-intercepted traffic leaves through the egress
	// interface with masquerade; the proxy's upstream connections use the
	// appliance's own address.
	EgressNAT = "nat"
	// EgressTunnel (one-arm): everything goes back into the tunnel it came
	// from; the proxy's upstream connections keep the client's address and
	// port.
	EgressTunnel = "tunnel"
)

// maxSlot is the largest tunnel.Pair.Slot.
const maxSlot = 65535

// Config configures steering. Every field has a default in DefaultConfig.
type Config struct {
	// EgressMode is "nat" (two-arm, default) or "tunnel" (one-arm).
	EgressMode string `yaml:"egress_mode"`
	// EgressInterface is where non-intercepted traffic leaves in nat mode
	// (masquerade applies to it). Empty: the interface of the IPv4 default
	// route, looked up at Start.
	EgressInterface string `yaml:"egress_interface"`
	// HTTPPorts and TLSPorts are the TCP destination ports intercepted from
	// the tunnels and handed to the HTTP and TLS listeners.
	HTTPPorts []uint16 `yaml:"http_ports"`
	TLSPorts  []uint16 `yaml:"tls_ports"`
	// HTTPListenPort and TLSListenPort are the ports of the transparent
	// listeners. They listen on 127.0.0.1 and ::1 only, so nothing can reach
	// them except packets TPROXY hands over (see doc.go).
	HTTPListenPort uint16 `yaml:"http_listen_port"`
	TLSListenPort  uint16 `yaml:"tls_listen_port"`
	// IPv6 installs the IPv6 half (rules, routes, listeners on ::1).
	IPv6 bool `yaml:"ipv6"`
	// TableName is the name of our nftables table (family inet).
	TableName string `yaml:"table_name"`
	// MarkBase is the packet/conntrack mark space we own: MarkBase itself
	// marks intercepted packets (local delivery), MarkBase+slot marks tunnel
	// slot. The low 16 bits must be zero; nobody else may use marks whose
	// upper 16 bits equal MarkBase's.
	MarkBase uint32 `yaml:"mark_base"`
	// RouteTableBase is the routing table for local delivery of intercepted
	// packets; RouteTableBase+slot is tunnel slot's table.
	RouteTableBase uint32 `yaml:"route_table_base"`
	// RulePriority is the priority of the local-delivery ip rule; per-tunnel
	// rules use RulePriority+1 (fwmark) and RulePriority+2 (iif, tunnel mode).
	RulePriority int `yaml:"rule_priority"`
	// ConntrackZone is the zone of the proxy's upstream connections in tunnel
	// mode; it keeps them apart from the client-side connection that has
	// the same 5-tuple.
	ConntrackZone uint16 `yaml:"conntrack_zone"`
	// DropQUIC drops (and counts) UDP to QUICPorts from the tunnels, so
	// browsers fall back to TCP, which is intercepted.
	DropQUIC  bool     `yaml:"drop_quic"`
	QUICPorts []uint16 `yaml:"quic_ports"`
	// SysctlInterval is how often the sysctls are re-asserted and the
	// table, ip rules and routes checked and repaired if someone else
	// changed them (Health also triggers a check at once).
	SysctlInterval time.Duration `yaml:"sysctl_interval"`
	// DisableSourceDestCheck turns the EC2 source/destination check off on
	// the instance at Start. Only needed for un-NATed forwarding out of the
	// instance's own NIC; see doc.go.
	DisableSourceDestCheck bool `yaml:"disable_source_dest_check"`
	// The EC2 and IMDS endpoints are the appliance's (aws.endpoints.ec2,
	// aws.imds_endpoint; issue 17): see SetAWS.
	// NotrackGeneve exempts the outer GENEVE packets from conntrack: UDP
	// to GenevePort arriving from anywhere but a tunnel (GWLB -> appliance,
	// raw prerouting) and UDP to GenevePort sent by the appliance itself
	// (its replies to GWLB, raw output). GWLB varies the outer source port
	// per flow, so tracking them costs one conntrack entry per inner flow
	// and a lookup per packet for nothing. Such packets are "ct state
	// untracked" to any other ruleset on the host; see doc.go.
	NotrackGeneve bool `yaml:"notrack_geneve"`
	// ConntrackChecksum is net.netfilter.nf_conntrack_checksum in the
	// appliance's namespace (issue 20). true (the kernel's default):
	// conntrack verifies the transport checksum of every packet it
	// tracks before it changes a connection's state. Decapsulated tunnel
	// packets carry no checksum-verified flag (CHECKSUM_NONE), so this
	// sums every forwarded packet in software: about 0.8 us per 8500-byte
	// packet on the bench. false skips it; then a packet with a bad
	// checksum is tracked like a good one: a bad-checksum RST or FIN
	// closes the conntrack entry (ending its flow record and, for a
	// forwarded flow, making its next packets a new flow that the network
	// policy decides again) although the endpoint drops the packet. The
	// destination still drops bad packets, and intercepted connections
	// are verified by the local TCP stack either way. A checksum is no
	// authentication (whoever can forge a bad one can forge a good one),
	// so false is a performance choice for large packets; see doc.go.
	// Namespace-wide: it also applies to other connections of the host
	// when the appliance runs in the host namespace.
	ConntrackChecksum bool `yaml:"conntrack_checksum"`
	// GenevePort is the tunnel's GENEVE port. Not a key of this section:
	// the application copies tunnel.port into it (default 6081).
	GenevePort uint16 `yaml:"-"`
	// GeneveSources are GWLB's subnets (tunnel.allowed_sources, copied
	// in by the application like GenevePort): the notrack rules match
	// only GENEVE from and to them.
	GeneveSources []netip.Prefix `yaml:"-"`
	// MaxTunnels is tunnel.max_tunnels (copied in by the application like
	// GenevePort): tunnel slots are 1..MaxTunnels. It decides how the low
	// 16 bits of a conntrack mark are shared between the tunnel slot (the
	// low bits.Len(MaxTunnels) bits) and the id of the network policy rule
	// that allowed the flow (the bits above; see ruleid.go).
	MaxTunnels int `yaml:"-"`

	// NetworkPolicy filters forwarded (non-intercepted) traffic from the
	// tunnels; see netpolicy.go.
	NetworkPolicy NetworkPolicy `yaml:"network_policy"`
}

// DefaultConfig returns every default.
func DefaultConfig() Config {
	return Config{
		EgressMode:     EgressNAT,
		HTTPPorts:      []uint16{80},
		TLSPorts:       []uint16{443},
		HTTPListenPort: 3129,
		TLSListenPort:  3130,
		IPv6:           true,
		TableName:      "gwlbproxy",
		MarkBase:       0x47570000,
		RouteTableBase: 20000,
		RulePriority:   100,
		ConntrackZone:  4757,
		DropQUIC:       true,
		QUICPorts:      []uint16{80, 443},
		SysctlInterval: 30 * time.Second,
		NotrackGeneve:  true,
		// verify: the kernel's default, the safe one
		ConntrackChecksum: true,
		GenevePort:        geneve.Port,
		MaxTunnels:        256,
		NetworkPolicy:     NetworkPolicy{LogGroup: 4757},
	}
}

// Validate checks the configuration; messages start with the yaml key.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	switch c.EgressMode {
	case EgressNAT, EgressTunnel:
	default:
		add("egress_mode: %q is not one of nat, tunnel", c.EgressMode)
	}
	if len(c.EgressInterface) >= 16 {
		add("egress_interface: %q longer than 15 bytes", c.EgressInterface)
	}
	if len(c.HTTPPorts)+len(c.TLSPorts) == 0 {
		add("http_ports: no port intercepted (http_ports and tls_ports both empty)")
	}
	seen := map[uint16]string{}
	for _, l := range []struct {
		key   string
		ports []uint16
	}{{"http_ports", c.HTTPPorts}, {"tls_ports", c.TLSPorts}} {
		for _, p := range l.ports {
			if p == 0 {
				add("%s: port 0", l.key)
			}
			if k, dup := seen[p]; dup {
				add("%s: port %d already in %s", l.key, p, k)
			}
			seen[p] = l.key
		}
	}
	for _, p := range c.QUICPorts {
		if p == 0 {
			add("quic_ports: port 0")
		}
	}
	if c.HTTPListenPort == 0 {
		add("http_listen_port: must not be 0")
	}
	if c.TLSListenPort == 0 {
		add("tls_listen_port: must not be 0")
	}
	if c.HTTPListenPort == c.TLSListenPort && c.HTTPListenPort != 0 {
		add("tls_listen_port: %d equals http_listen_port", c.TLSListenPort)
	}
	if c.TableName == "" || len(c.TableName) > 255 {
		add("table_name: %q must be 1..255 bytes", c.TableName)
	}
	if c.MarkBase&0xffff != 0 || c.MarkBase == 0 {
		add("mark_base: %#x must be non-zero with the low 16 bits zero", c.MarkBase)
	}
	if c.RouteTableBase < 256 || uint64(c.RouteTableBase)+maxSlot > 0xffffffff {
		add("route_table_base: %d out of range 256..%d", c.RouteTableBase, uint32(0xffffffff-maxSlot))
	}
	if c.RulePriority < 1 || c.RulePriority > 32000 {
		add("rule_priority: %d out of range 1..32000", c.RulePriority)
	}
	if c.ConntrackZone == 0 {
		add("conntrack_zone: must not be 0 (the default zone)")
	}
	if c.SysctlInterval < time.Second {
		add("sysctl_interval: %s shorter than 1s", c.SysctlInterval)
	}
	if c.NotrackGeneve && c.GenevePort == 0 {
		add("notrack_geneve: the GENEVE port (tunnel.port) is 0")
	}
	errs = append(errs, c.NetworkPolicy.validate()...)
	errs = append(errs, c.validateRuleIDs()...)
	return errors.Join(errs...)
}

func (c *Config) tunnelMode() bool { return c.EgressMode == EgressTunnel }

// markMask selects the part of a mark that says "ours".
const markMask = 0xffff0000

func (c *Config) tunnelMark(slot uint16) uint32 { return c.MarkBase | uint32(slot) }
func (c *Config) tunnelTable(slot uint16) int   { return int(c.RouteTableBase) + int(slot) }

// slotBits is how many low bits of a mark hold the tunnel slot.
func (c *Config) slotBits() int { return bits.Len(uint(c.MaxTunnels)) }

// slotMask selects the slot of a mark.
func (c *Config) slotMask() uint32 { return 1<<c.slotBits() - 1 }

// ruleMask selects the network policy rule id of a conntrack mark: the
// bits between the slot and the "ours" half.
func (c *Config) ruleMask() uint32 { return 0xffff &^ c.slotMask() }

// routeMask selects what routing needs of a conntrack mark (ours + slot):
// the part copied to the packet mark.
func (c *Config) routeMask() uint32 { return markMask | c.slotMask() }

// maxRuleID is the largest rule id the mark has room for (0 is "none").
func (c *Config) maxRuleID() int { return 1<<(16-c.slotBits()) - 1 }

// ruleMark is the conntrack mark bits of rule id.
func (c *Config) ruleMark(id uint16) uint32 { return uint32(id) << c.slotBits() }
