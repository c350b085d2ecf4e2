package tunnelbench

import (
	"strings"
	"testing"
)

// A perf script excerpt: two packet-work samples (their chains reach
// net_rx_action), one of a process that is not packet work.
const perfScriptSample = `    250000 
	ffffffff81a1 nft_do_chain+0x1f
	ffffffff81a2 nf_hook_slow+0x40
	ffffffff81a3 ip_rcv+0x10
	ffffffff81a4 net_rx_action+0x99

    250000 
	ffffffffc0de bpf_prog_75c009fdc0610007_geneve_ingress+0x55
	ffffffff81a9 tcx_run+0x1
	ffffffff81a4 net_rx_action+0x99

    500000 
	ffffffff81b0 states_equal+0x5
	ffffffff81b1 bpf_check+0x10

`

func TestParsePerfScript(t *testing.T) {
	total, byStage, bySym := parsePerfScript(strings.NewReader(perfScriptSample))
	if total != 500000 {
		t.Fatalf("packet work %d ns, want 500000 (the verifier sample is not packet work)", total)
	}
	if byStage["netfilter, conntrack"] != 250000 || byStage["bpf programs"] != 250000 || len(byStage) != 2 {
		t.Fatalf("stages %v", byStage)
	}
	if bySym["bpf programs"]["bpf_prog_75c009fdc0610007_geneve_ingress"] != 250000 {
		t.Fatalf("functions %v", bySym)
	}
}
