package tunnelbench

import (
	"errors"
	"io"
	"time"

	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
)

// bpfProgs are the appliance's fast-path programs, found where they are
// attached in the appliance's namespace (ingress on the underlay link,
// egress on the tunnel devices): other processes on the machine (tests)
// may have programs of the same name loaded. Their run-time statistics
// are the per-stage breakdown the issue asks for when a target is missed.
type bpfProgs struct {
	stats           io.Closer // kernel.bpf_stats_enabled while held
	ingress, egress *ebpf.Program
}

// bpfStage is a program's accumulated run time and run count.
type bpfStage struct {
	runtime time.Duration
	runs    uint64
}

func openBPFProgs(ns *gwlbsim.NS, underlay string) (*bpfProgs, error) {
	var inID, outID ebpf.ProgramID
	err := ns.Do(func() error {
		links, err := ns.Netlink().LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			name, ix := l.Attrs().Name, l.Attrs().Index
			at, dst := ebpf.AttachNone, (*ebpf.ProgramID)(nil)
			switch {
			case name == underlay:
				at, dst = ebpf.AttachTCXIngress, &inID
			case strings.HasPrefix(name, "gwo-") || strings.HasPrefix(name, "gwi-"):
				at, dst = ebpf.AttachTCXEgress, &outID
			default:
				continue
			}
			r, err := link.QueryPrograms(link.QueryOptions{Target: ix, Attach: at})
			if err != nil || len(r.Programs) == 0 {
				continue
			}
			*dst = r.Programs[0].ID
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if inID == 0 || outID == 0 {
		return nil, errors.New("fast-path programs not attached with tcx in the appliance's namespace")
	}
	st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, err
	}
	p := &bpfProgs{stats: st}
	if p.ingress, err = ebpf.NewProgramFromID(inID); err == nil {
		p.egress, err = ebpf.NewProgramFromID(outID)
	}
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *bpfProgs) read() (in, out bpfStage) {
	for _, x := range []struct {
		prog *ebpf.Program
		dst  *bpfStage
	}{{p.ingress, &in}, {p.egress, &out}} {
		if s, err := x.prog.Stats(); err == nil {
			*x.dst = bpfStage{s.Runtime, s.RunCount}
		}
	}
	return in, out
}

func (p *bpfProgs) Close() {
	for _, prog := range []*ebpf.Program{p.ingress, p.egress} {
		if prog != nil {
			prog.Close()
		}
	}
	p.stats.Close()
}

// perRun is the mean run time between two readings.
func perRun(a, b bpfStage) time.Duration {
	if b.runs <= a.runs {
		return 0
	}
	return (b.runtime - a.runtime) / time.Duration(b.runs-a.runs)
}
