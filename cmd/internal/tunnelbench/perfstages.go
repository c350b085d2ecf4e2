package tunnelbench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// stages sorts the kernel functions a packet runs through on the
// appliance's core into the stages the breakdown names. The first
// match of a sample's innermost function wins.
var stages = []struct {
	name string
	re   *regexp.Regexp
}{
	{"bpf programs", regexp.MustCompile(`^bpf_prog_`)},
	{"bpf helpers, redirect", regexp.MustCompile(`^(bpf_|__bpf_|skb_do_redirect|sk_skb|skb_ensure_writable|skb_change_head|__skb_change)`)},
	{"checksum", regexp.MustCompile(`(csum|checksum)`)},
	{"netfilter, conntrack", regexp.MustCompile(`^(nft_|nf_|__nf_|ipv4_conntrack|ipv4_confirm|jhash|hash_conntrack|__nft|____nf_conntrack|nf_ct_)`)},
	{"routing", regexp.MustCompile(`^(fib|__fib|ip_route|ip_mkroute|rt_|dst_|__ip_route|l3mdev)`)},
	{"ip receive, forward, transmit", regexp.MustCompile(`^(ip_|__ip_|neigh|__neigh|__dev_queue_xmit|dev_hard_start_xmit|validate_xmit|veth_|dev_forward|__dev_forward|eth_type_trans|netdev_core_pick|__netif_rx|netif_rx|skb_scrub|__ipv4|inet_|tun_|udp|__udp|sock_|sk_)`)},
	{"backlog, receive core, tc", regexp.MustCompile(`^(__netif_receive|netif_receive|process_backlog|net_rx_action|__napi|napi|enqueue_to_backlog|rps_|get_rps|tcx_|sch_handle|handle_softirqs|tcf_|__tcf|skb_defer|gro_)`)},
	{"skb alloc, free, copy", regexp.MustCompile(`^(kmem_cache|kfree|__kfree|skb_release|__alloc_skb|skb_free|consume_skb|napi_consume|__slab|slab|___slab|__kmalloc|kmalloc|skb_clone|pskb_expand_head|__pskb_pull|skb_copy|memcpy|__memcpy|__pi_memcpy|memmove|__pi_memmove|skb_try_coalesce|page_frag|__put_page|put_page|skb_attempt_defer|__build_skb|build_skb)`)},
}

// Stage is one line of a per-stage breakdown.
type Stage struct {
	Name      string
	PerPacket time.Duration
	// Top names the stage's most sampled functions with their share.
	Top string
}

// Breakdown is where the appliance's core spent its packet work (samples
// whose call chain runs through net_rx_action: receive, forwarding and
// transmit in softirq) during one row, per packet received back.
type Breakdown struct {
	PerPacket time.Duration // all of the packet work
	Stages    []Stage
}

// perfBreakdown reads a `perf record -g` file of the appliance's CPU.
func perfBreakdown(file string, packets float64) (*Breakdown, error) {
	if packets <= 0 {
		return nil, fmt.Errorf("no packets")
	}
	cmd := exec.Command("perf", "script", "-i", file, "-F", "period,ip,sym")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	total, byStage, bySym := parsePerfScript(out)
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("perf script: %w", err)
	}
	b := &Breakdown{PerPacket: time.Duration(float64(total) / packets)}
	for name, v := range byStage {
		syms := bySym[name]
		names := make([]string, 0, len(syms))
		for s := range syms {
			names = append(names, s)
		}
		sort.Slice(names, func(i, j int) bool { return syms[names[i]] > syms[names[j]] })
		var top []string
		for _, s := range names[:min(3, len(names))] {
			top = append(top, fmt.Sprintf("%s %.0f ns", s, float64(syms[s])/packets))
		}
		b.Stages = append(b.Stages, Stage{Name: name, PerPacket: time.Duration(float64(v) / packets), Top: strings.Join(top, ", ")})
	}
	sort.Slice(b.Stages, func(i, j int) bool { return b.Stages[i].PerPacket > b.Stages[j].PerPacket })
	return b, nil
}

// parsePerfScript sums sample periods (ns of cpu-clock) of the packet
// work by stage and by innermost function. perf script prints a header
// line per sample ending in its period, then its call chain, innermost
// first, one tab-indented "address symbol+offset" line each, then a blank
// line.
func parsePerfScript(r io.Reader) (total uint64, byStage map[string]uint64, bySym map[string]map[string]uint64) {
	byStage, bySym = map[string]uint64{}, map[string]map[string]uint64{}
	var period uint64
	var chain []string
	flush := func() {
		defer func() { chain, period = chain[:0], 0 }()
		net := false
		for _, s := range chain {
			if s == "net_rx_action" {
				net = true
				break
			}
		}
		if !net || len(chain) == 0 {
			return
		}
		total += period
		name := "other kernel"
		for _, st := range stages {
			if st.re.MatchString(chain[0]) {
				name = st.name
				break
			}
		}
		byStage[name] += period
		if bySym[name] == nil {
			bySym[name] = map[string]uint64{}
		}
		bySym[name][chain[0]] += period
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			flush()
			continue
		}
		if line[0] != '\t' {
			flush()
			f := strings.Fields(string(line))
			if len(f) > 0 {
				period, _ = strconv.ParseUint(f[len(f)-1], 10, 64)
			}
			continue
		}
		f := strings.Fields(string(line))
		if len(f) >= 2 {
			sym := f[1]
			if i := strings.Index(sym, "+0x"); i > 0 {
				sym = sym[:i]
			}
			chain = append(chain, sym)
		}
	}
	flush()
	return total, byStage, bySym
}
