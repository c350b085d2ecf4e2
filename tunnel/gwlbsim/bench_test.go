//go:build linux

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
	if res.FlatOut.SentPPS <= 0 || res.FlatOut.ReceivedPPS <= 0 || res.InnerSize != 92 {
		t.Fatalf("nothing measured: %+v", res)
	}
	checkSearch(t, res, 0.01)
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
	if res.BadLength != 0 {
		t.Fatalf("returns of the wrong size: %+v", res)
	}
	checkSearch(t, res, cfg.MaxLoss)
}

// checkSearch checks the result is consistent with the search rules; the
// rates themselves depend on the machine's load and are not asserted.
func checkSearch(t *testing.T, res BenchResult, maxLoss float64) {
	t.Helper()
	best := 0.0
	if res.FlatOut.Loss <= maxLoss {
		best = res.FlatOut.ReceivedPPS
		if len(res.Steps) != 0 {
			t.Fatalf("searched although flat out was loss-free: %+v", res)
		}
	} else if len(res.Steps) == 0 {
		t.Fatalf("flat out lost %.1f%% but no search: %+v", res.FlatOut.Loss*100, res)
	}
	for _, s := range res.Steps {
		if s.OfferedPPS <= 0 || s.OfferedPPS > res.FlatOut.SentPPS {
			t.Fatalf("step offered %.0f outside (0, %.0f]", s.OfferedPPS, res.FlatOut.SentPPS)
		}
		if s.Loss <= maxLoss {
			best = max(best, s.ReceivedPPS)
		}
	}
	if res.BestPPS != best {
		t.Fatalf("best %.0f, want %.0f from %+v", res.BestPPS, best, res)
	}
	if res.BestGbps != best*float64(res.InnerSize)*8/1e9 {
		t.Fatalf("gbps %v", res.BestGbps)
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
