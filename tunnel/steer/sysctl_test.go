//go:build linux

package steer

import (
	"os"
	"strings"
	"testing"
)

// TestSysctlReasserted: a reset (as systemd-sysctl does after boot) is
// undone by the reasserter and counted; Explain shows rules, routes and
// sysctls of the mode.
func TestSysctlReasserted(t *testing.T) {
	cfg := natConfig() // sysctl_interval 1s
	tp := newTopo(t, cfg, "a")
	tn := tp.tun["a"]
	read := func(key string) string {
		var v string
		tp.app.do(func() error {
			b, _ := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
			v = strings.TrimSpace(string(b))
			return nil
		})
		return v
	}
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if read(k) != "1" {
			t.Fatalf("%s = %s", k, read(k))
		}
	}
	tp.app.sysctl(t, "net.ipv4.conf."+tn.pair.In+".rp_filter", "1")
	tp.app.sysctl(t, "net.ipv4.conf.all.rp_filter", "2")
	waitFor(t, "rp_filter re-asserted", func() bool {
		return read("net.ipv4.conf."+tn.pair.In+".rp_filter") == "0" && read("net.ipv4.conf.all.rp_filter") == "0"
	})
	waitFor(t, "reassert counted", func() bool { return tp.s.Stats().SysctlReasserted >= 2 })

	ex := tp.s.Explain()
	for _, want := range []string{
		"table inet gwlbproxy",
		"tproxy ip to 127.0.0.1:3129",
		"tproxy ip6 to [::1]:3130",
		"masquerade",
		"ip -4 rule add priority 100 fwmark 0x47570000 lookup 20000",
		"ip -4 route add local 0.0.0.0/0 dev lo table 20000",
		"ip -6 rule add priority 101 fwmark 0x47570001 lookup 20001",
		"ip -4 route add default dev " + tn.pair.Out + " table 20001",
		"net.ipv4.conf." + tn.pair.In + ".rp_filter = 0 (now 0)",
	} {
		if !strings.Contains(ex, want) {
			t.Errorf("Explain lacks %q", want)
		}
	}
	if strings.Contains(ex, "iif "+tn.pair.In) {
		t.Error("nat mode Explain has an iif rule")
	}
	if t.Failed() {
		t.Log(ex)
	}
}

func TestExplainTunnelModeBeforeStart(t *testing.T) {
	s, err := New(tunnelConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ex := s.Explain()
	for _, want := range []string{"ct zone set 4757", "socket transparent 1", "iif gwi-<X> lookup 20001", "(example: per tunnel, slot N)"} {
		if !strings.Contains(ex, want) {
			t.Errorf("Explain lacks %q\n%s", want, ex)
		}
	}
	if strings.Contains(ex, "masquerade") {
		t.Error("tunnel mode masquerades")
	}
}

// TestConntrackChecksumSysctl: steer.conntrack_checksum decides
// net.netfilter.nf_conntrack_checksum, 1 by default (verify).
func TestConntrackChecksumSysctl(t *testing.T) {
	for _, on := range []bool{true, false} {
		cfg := DefaultConfig()
		if !cfg.ConntrackChecksum {
			t.Fatal("conntrack_checksum default is false, want true (the kernel's, safe)")
		}
		cfg.ConntrackChecksum = on
		s := &Steerer{cfg: cfg}
		want := map[bool]string{true: "1", false: "0"}[on]
		n := 0
		for _, sc := range s.baseSysctls() {
			if sc.key == "net.netfilter.nf_conntrack_checksum" {
				n++
				if sc.val != want {
					t.Errorf("conntrack_checksum=%v: nf_conntrack_checksum=%s, want %s", on, sc.val, want)
				}
			}
		}
		if n != 1 {
			t.Errorf("conntrack_checksum=%v: %d nf_conntrack_checksum entries, want 1", on, n)
		}
	}
}
