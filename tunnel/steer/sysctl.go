//go:build linux

package steer

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// sysctl is one /proc/sys setting we need and why.
type sysctl struct {
	key, val, why string
}

func (s sysctl) path() string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(s.key, ".", "/"))
}

// baseSysctls are the namespace-wide settings.
//
// Deliberately not set: accept_local (no packet we route arrives with one of
// our own addresses as source: the upstream socket spoofs the client, not
// us), route_localnet (TPROXY assigns the socket without rewriting the
// destination, so no packet is routed to 127.0.0.1), src_valid_mark (only
// consulted by rp_filter, which is off on the tunnels), tcp_fwmark_accept
// (no effect on our listeners: a listener with SO_MARK passes its own mark
// to accepted sockets whatever the sysctl says; namespace-wide, so not
// ours to change).
func (s *Steerer) baseSysctls() []sysctl {
	out := []sysctl{
		{"net.ipv4.ip_forward", "1", "forward non-intercepted tunnel traffic"},
		{"net.ipv4.conf.all.rp_filter", "0", "replies leave by gwo-*, requests came in by gwi-*: asymmetric by design; effective rp_filter is max(all, iface)"},
		{"net.ipv4.conf.default.rp_filter", "0", "tunnel interfaces created later start with 0"},
	}
	if s.cfg.IPv6 {
		out = append(out, sysctl{"net.ipv6.conf.all.forwarding", "1", "forward non-intercepted IPv6 tunnel traffic"})
	}
	if s.cfg.ConntrackChecksum {
		out = append(out, sysctl{"net.netfilter.nf_conntrack_checksum", "1", "steer.conntrack_checksum true: conntrack verifies checksums before tracking (decapsulated packets are summed in software)"})
	} else {
		out = append(out, sysctl{"net.netfilter.nf_conntrack_checksum", "0", "steer.conntrack_checksum false: bad-checksum packets are tracked (a forged bad-checksum RST/FIN can close an entry); saves summing every decapsulated packet"})
	}
	return out
}

// pairSysctls are the per-interface settings of one tunnel pair.
func pairSysctls(in, out string) []sysctl {
	return []sysctl{
		{"net.ipv4.conf." + in + ".rp_filter", "0", "source addresses of clients are not routed via gwi-*"},
		{"net.ipv4.conf." + out + ".rp_filter", "0", "symmetry with gwi-*"},
	}
}

// apply writes every setting whose value differs; it returns how many it
// had to change (a non-zero count after the first run means something reset
// them, typically systemd-sysctl).
func (s *Steerer) applySysctls(list []sysctl) (changed int, err error) {
	err = s.ns.do(func() error {
		var errs []string
		for _, sc := range list {
			cur, rerr := os.ReadFile(sc.path())
			if rerr == nil && string(bytes.TrimSpace(cur)) == sc.val {
				continue
			}
			if werr := os.WriteFile(sc.path(), []byte(sc.val), 0o644); werr != nil {
				if os.IsNotExist(werr) {
					continue // interface gone between listing and writing
				}
				errs = append(errs, fmt.Sprintf("%s: %v", sc.key, werr))
				continue
			}
			changed++
		}
		if len(errs) > 0 {
			return fmt.Errorf("sysctl: %s", strings.Join(errs, "; "))
		}
		return nil
	})
	return changed, err
}

// readSysctl returns the current value (for Explain).
func (s *Steerer) readSysctl(sc sysctl) string {
	var v string
	_ = s.ns.do(func() error {
		b, err := os.ReadFile(sc.path())
		if err != nil {
			v = "?"
			return nil
		}
		v = string(bytes.TrimSpace(b))
		return nil
	})
	return v
}
