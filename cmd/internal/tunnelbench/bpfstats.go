package tunnelbench

import (
	"errors"
	"io"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// bpfProgs are the appliance's fast-path programs, found by name (the
// newest of each: IDs grow), for their run-time statistics: the
// per-stage breakdown the issue asks for when a target is missed.
type bpfProgs struct {
	stats           io.Closer // kernel.bpf_stats_enabled while held
	ingress, egress *ebpf.Program
}

// bpfStage is a program's accumulated run time and run count.
type bpfStage struct {
	runtime time.Duration
	runs    uint64
}

func openBPFProgs() (*bpfProgs, error) {
	st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, err
	}
	p := &bpfProgs{stats: st}
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := prog.Info()
		if err != nil {
			prog.Close()
			continue
		}
		switch info.Name {
		case "geneve_ingress":
			if p.ingress != nil {
				p.ingress.Close()
			}
			p.ingress = prog
		case "geneve_egress":
			if p.egress != nil {
				p.egress.Close()
			}
			p.egress = prog
		default:
			prog.Close()
		}
	}
	if p.ingress == nil || p.egress == nil {
		p.Close()
		return nil, errors.New("fast-path programs not found")
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
