//go:build linux

package tunnel

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigNeedsAllowedSources(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "allowed_sources: required") {
		t.Fatalf("default config: %v", err)
	}
	c.AllowedSources = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
	if err := c.Validate(); err != nil {
		t.Fatalf("default + allowed_sources: %v", err)
	}
	if c.Port != 6081 || c.MTU != 8500 || c.Flows.TCPTimeout != 350*time.Second || c.Flows.OtherTimeout != 120*time.Second || c.IdleTimeout != 0 {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestValidateNamesTheKey(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "hook")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Listen = netip.Addr{} }, "listen:"},
		{func(c *Config) { c.Port = 0 }, "port:"},
		{func(c *Config) { c.MTU = 70000 }, "mtu: 70000 out of range"},
		{func(c *Config) { c.Workers = -1 }, "workers:"},
		{func(c *Config) { c.Batch = 0 }, "batch:"},
		{func(c *Config) { c.MaxTunnels = 0 }, "max_tunnels:"},
		{func(c *Config) { c.PendingPackets = -1 }, "pending_packets:"},
		{func(c *Config) { c.IdleTimeout = time.Millisecond }, "idle_timeout:"},
		{func(c *Config) { c.HookTimeout = 0 }, "hook_timeout:"},
		{func(c *Config) { c.Flows.TCPTimeout = time.Second }, "flows.tcp_timeout:"},
		{func(c *Config) { c.CreateHook = "relative.sh" }, "create_hook:"},
		{func(c *Config) { c.DestroyHook = notExec }, "destroy_hook:"},
		{func(c *Config) { c.CreateHook = filepath.Join(dir, "missing") }, "create_hook:"},
		{func(c *Config) { c.Datapath = "xdp" }, "datapath:"},
		{func(c *Config) { c.Datapath = "" }, "datapath:"},
	} {
		c := DefaultConfig()
		c.AllowedSources = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("want %q, got %v", tc.want, err)
		}
		if _, nerr := New(c, nil, nil, nil); nerr == nil {
			t.Errorf("New accepted invalid config (%s)", tc.want)
		}
	}
}

func TestHealthBeforeRun(t *testing.T) {
	d, _ := benchDaemon(t)
	d.running.Store(false)
	if d.Health() == nil {
		t.Fatal("healthy before Run")
	}
	if st := d.Stats(); st.Running || len(st.Workers) != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// FuzzDatagram feeds arbitrary datagrams through the receive path and
// arbitrary packets through the return path: nothing may panic, and a
// decapsulated packet is always a sub-slice of the datagram.
func FuzzDatagram(f *testing.F) {
	f.Add([]byte{0, 0, 8, 0, 0, 0, 0, 0, 0x45}, []byte{0x45})
	f.Add(append(geneveHdr(), udpPacket(benchCli, benchSrv, 4)...), udpPacket(benchSrv, benchCli, 4))
	f.Fuzz(func(t *testing.T, dg, ret []byte) {
		d, w := benchDaemon(t)
		rx := newRxState(d.cfg)
		m := &rx.msgs[0]
		if len(dg) > len(m.Buf) {
			return
		}
		m.N = copy(m.Buf, dg)
		m.Src, m.Local = benchGWLB, benchLocal
		tn, inner, r := w.decap(rx, m, time.Now())
		if r >= 0 {
			return
		}
		if len(inner) > m.N {
			t.Fatal("inner longer than datagram")
		}
		tx := newTxState(d.cfg, nil)
		if len(ret) > len(tx.bufs[0])-txHeadroom {
			return
		}
		tx.sizes[0] = copy(tx.bufs[0][txHeadroom:], ret)
		tx.sizes[1] = copy(tx.bufs[1][txHeadroom:], inner)
		d.encapBatch(tn, w, tx, 2, time.Now())
	})
}

func geneveHdr() []byte {
	return []byte{8, 0, 8, 0, 0, 0, 0, 0,
		1, 8, 1, 2, 0, 0, 0, 0, 0, 0, 0, 1,
		1, 8, 2, 2, 0, 0, 0, 0, 0, 0, 0, 2,
		1, 8, 3, 1, 0, 0, 0, 3}
}
