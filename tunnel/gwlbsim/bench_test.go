package gwlbsim

import (
	"context"
	"testing"
	"time"
)

func shortBench(topo *Topology, mode Mode) BenchConfig {
	c := DefaultBenchConfig(topo)
	c.Mode = mode
	c.Flows = 8
	c.Step = 200 * time.Millisecond
	c.Drain = 100 * time.Millisecond
	c.Steps = 3
	return c
}

func TestBenchPlain(t *testing.T) {
	topo := newTopo(t)
	res, err := Bench(context.Background(), shortBench(topo, ModePlain))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.FlatOut.SentPPS <= 0 || res.FlatOut.ReceivedPPS <= 0 || res.BestPPS <= 0 || res.InnerSize != 92 {
		t.Fatalf("nothing measured: %+v", res)
	}
	if res.SenderCPU <= 0 {
		t.Fatalf("sender CPU not measured: %+v", res)
	}
}

func TestBenchTunnelReflector(t *testing.T) {
	topo := newTopo(t, EndpointConfig{ID: 0x0123456789abcdef, AttachmentID: 3})
	refl := startReflector(t, topo)
	cfg := shortBench(topo, ModeTunnel)
	cfg.PayloadSize = 8472
	// The in-test reflector is slow and the box is shared: allow 5% and
	// search further down.
	cfg.MaxLoss = 0.05
	cfg.Steps = 6
	res, err := Bench(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if refl.seen.Load() == 0 || res.FlatOut.ReceivedPPS <= 0 || res.InnerSize != 8500 {
		t.Fatalf("reflector saw %d: %+v", refl.seen.Load(), res)
	}
	if res.BestPPS <= 0 {
		t.Fatalf("no rate with <= 1%% loss: %+v", res)
	}
}

func TestBenchConfigErrors(t *testing.T) {
	if _, err := Bench(context.Background(), BenchConfig{}); err == nil {
		t.Fatal("no topology accepted")
	}
	topo := &Topology{}
	if _, err := Bench(context.Background(), BenchConfig{Topology: topo, Mode: "x"}); err == nil {
		t.Fatal("bad mode accepted")
	}
	if _, err := Bench(context.Background(), BenchConfig{Topology: topo, PayloadSize: 9000}); err == nil {
		t.Fatal("oversized payload accepted")
	}
}
