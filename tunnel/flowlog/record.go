//go:build linux

package flowlog

import (
	"net/netip"
	"strconv"
	"time"
)

// Record types (record_type).
const (
	TypeFlow    = "flow"         // a forwarded flow ended
	TypeInterim = "flow_interim" // a long flow, still running (cumulative counters)
	TypeDenied  = "flow_denied"  // an attempt the network policy denied
	TypeSummary = "flow_summary" // what was counted instead of recorded
)

// Record is one flow record. Direction: "out" is client -> destination
// (the original direction, leaving the VPC), "in" is destination ->
// client. In JSON every field is written (same shape for every flow
// record); times are RFC 3339 UTC.
type Record struct {
	Type       string
	RecordID   string
	InstanceID string
	EndpointID uint64 // 0: unknown
	Protocol   uint8
	Client     netip.AddrPort
	Dst        netip.AddrPort
	NAT        netip.AddrPort // source after masquerade (nat mode), else zero
	Action     string
	Rule       string
	// PolicyVersion is the network policy version the rule belongs to
	// (steer's NetworkPolicy.Version, "np-" and 12 hex digits).
	PolicyVersion string
	PacketsOut    uint64
	BytesOut      uint64
	PacketsIn     uint64
	BytesIn       uint64
	Start, End    time.Time
	TCPState      string
	ICMPType      int // -1 unless ICMP
	ICMPCode      int
}

// protoNames are the record's names of IP protocol numbers; others are
// written as the number.
var protoNames = [256]string{1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp"}

// tcpStates are conntrack's TCP states (enum tcp_conntrack).
var tcpStates = [...]string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

func tcpStateName(s uint8) string {
	if int(s) < len(tcpStates) {
		return tcpStates[s]
	}
	return strconv.Itoa(int(s))
}

// AppendJSON appends r as one JSON object. Every string it writes is
// either a fixed name, an address, or a rule name (steer validates those
// to [A-Za-z0-9_.-]); appendStr escapes anyway.
func (r *Record) AppendJSON(b []byte) []byte { return r.appendJSON(b, "", 0) }

// appendJSON is AppendJSON; with idPrefix set, record_id is idPrefix and
// seq in hex instead of r.RecordID (the writer's ids, without allocating
// a string per record).
func (r *Record) appendJSON(b []byte, idPrefix string, seq uint64) []byte {
	end := r.End
	if end.IsZero() {
		end = r.Start
	}
	b = append(b, `{"time":"`...)
	b = end.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	b = appendStr(b, "record_type", r.Type)
	if idPrefix != "" {
		b = append(b, `,"record_id":"`...)
		b = append(b, idPrefix...)
		b = strconv.AppendUint(b, seq, 16)
		b = append(b, '"')
	} else {
		b = appendStr(b, "record_id", r.RecordID)
	}
	b = appendStr(b, "instance_id", r.InstanceID)
	b = append(b, `,"endpoint_id":"`...)
	if r.EndpointID != 0 {
		// policy.FormatEndpointID's form, without its allocation.
		b = append(b, "vpce-"...)
		for i := 16; i >= 0; i-- {
			b = append(b, hexDigits[(r.EndpointID>>(4*uint(i)))&0xf])
		}
	}
	b = append(b, '"')
	if name := protoNames[r.Protocol]; name != "" {
		b = appendStr(b, "protocol", name)
	} else {
		b = append(b, `,"protocol":"`...)
		b = strconv.AppendUint(b, uint64(r.Protocol), 10)
		b = append(b, '"')
	}
	b = appendAddr(b, "client_ip", r.Client.Addr())
	b = appendInt(b, "client_port", int64(r.Client.Port()))
	b = appendAddr(b, "dst_ip", r.Dst.Addr())
	b = appendInt(b, "dst_port", int64(r.Dst.Port()))
	b = appendAddr(b, "nat_ip", r.NAT.Addr())
	b = appendInt(b, "nat_port", int64(r.NAT.Port()))
	b = appendStr(b, "action", r.Action)
	b = appendStr(b, "rule", r.Rule)
	b = appendStr(b, "policy_version", r.PolicyVersion)
	b = appendInt(b, "packets_out", int64(r.PacketsOut))
	b = appendInt(b, "bytes_out", int64(r.BytesOut))
	b = appendInt(b, "packets_in", int64(r.PacketsIn))
	b = appendInt(b, "bytes_in", int64(r.BytesIn))
	b = append(b, `,"start":"`...)
	if !r.Start.IsZero() {
		b = r.Start.UTC().AppendFormat(b, time.RFC3339Nano)
	}
	b = append(b, `","end":"`...)
	if !r.End.IsZero() {
		b = r.End.UTC().AppendFormat(b, time.RFC3339Nano)
	}
	b = append(b, '"')
	var dur float64
	if !r.Start.IsZero() && r.End.After(r.Start) {
		dur = float64(r.End.Sub(r.Start).Microseconds()) / 1000
	}
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, dur, 'f', 3, 64)
	b = appendStr(b, "tcp_state", r.TCPState)
	b = appendInt(b, "icmp_type", int64(r.ICMPType))
	b = appendInt(b, "icmp_code", int64(r.ICMPCode))
	return append(b, '}')
}

func appendInt(b []byte, key string, v int64) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, v, 10)
}

func appendAddr(b []byte, key string, a netip.Addr) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, `":"`...)
	if a.IsValid() {
		b = a.Unmap().AppendTo(b)
	}
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

func appendStr(b []byte, key, s string) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, `":"`...)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c >= 0x7f:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// summary is what was counted instead of recorded in one interval.
type summary struct {
	flows, packetsOut, bytesOut, packetsIn, bytesIn uint64
	queueFull, rateLimited                          uint64
	deniedSuppressed, deniedSources                 uint64
	overruns                                        uint64
}

func (s *summary) empty() bool {
	return s.flows == 0 && s.deniedSuppressed == 0 && s.overruns == 0
}

func (s *summary) appendJSON(b []byte, now time.Time, instance, id string, interval time.Duration) []byte {
	b = append(b, `{"time":"`...)
	b = now.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	b = appendStr(b, "record_type", TypeSummary)
	b = appendStr(b, "record_id", id)
	b = appendStr(b, "instance_id", instance)
	b = appendInt(b, "interval_ms", interval.Milliseconds())
	b = appendInt(b, "flows", int64(s.flows))
	b = appendInt(b, "flows_queue_full", int64(s.queueFull))
	b = appendInt(b, "flows_rate_limited", int64(s.rateLimited))
	b = appendInt(b, "packets_out", int64(s.packetsOut))
	b = appendInt(b, "bytes_out", int64(s.bytesOut))
	b = appendInt(b, "packets_in", int64(s.packetsIn))
	b = appendInt(b, "bytes_in", int64(s.bytesIn))
	b = appendInt(b, "denied_suppressed", int64(s.deniedSuppressed))
	b = appendInt(b, "denied_sources", int64(s.deniedSources))
	b = appendInt(b, "netlink_overruns", int64(s.overruns))
	return append(b, '}')
}

// RecordFields are the fields of every flow, flow_interim and flow_denied
// record, in order.
var RecordFields = []string{"time", "record_type", "record_id", "instance_id", "endpoint_id", "protocol",
	"client_ip", "client_port", "dst_ip", "dst_port", "nat_ip", "nat_port", "action", "rule", "policy_version",
	"packets_out", "bytes_out", "packets_in", "bytes_in", "start", "end", "duration_ms", "tcp_state", "icmp_type", "icmp_code"}

// SummaryFields are the fields of a flow_summary record, in order.
var SummaryFields = []string{"time", "record_type", "record_id", "instance_id", "interval_ms", "flows",
	"flows_queue_full", "flows_rate_limited", "packets_out", "bytes_out", "packets_in", "bytes_in",
	"denied_suppressed", "denied_sources", "netlink_overruns"}
