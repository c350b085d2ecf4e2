//go:build linux

package gwlbsim

import (
	"os"
	"testing"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and tun devices")
	}
}

func newTopo(t testing.TB, eps ...EndpointConfig) *Topology {
	t.Helper()
	needRoot(t)
	topo, err := NewTopology(TopologyConfig{Prefix: "gst", Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	return topo
}

func TestTopology(t *testing.T) {
	topo := newTopo(t, EndpointConfig{ID: 1, AttachmentID: 2})
	if _, err := os.Stat("/var/run/netns/" + topo.Appliance.Name); err != nil {
		t.Fatalf("appliance netns not usable by ip netns exec: %v", err)
	}
}
