//go:build linux

package tunnel

import (
	"sort"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/fastpath"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
)

// Stats is a JSON-able snapshot for the health endpoint.
type Stats struct {
	Running  bool   `json:"running"`
	Datapath string `json:"datapath"` // ebpf or userspace
	// FastpathPassed counts packets the in-kernel datapath left to the
	// userspace path, by reason (ebpf only).
	FastpathPassed   map[string]uint64 `json:"fastpath_passed,omitempty"`
	Listen           string            `json:"listen"`
	TunnelsCreated   uint64            `json:"tunnels_created"`
	TunnelsDestroyed uint64            `json:"tunnels_destroyed"`
	TunnelFailures   uint64            `json:"tunnel_failures"`
	HookFailures     uint64            `json:"hook_failures"`
	PendingQueued    uint64            `json:"pending_queued"`
	Drops            map[string]uint64 `json:"drops"` // non-zero reasons only
	Tunnels          []TunnelStats     `json:"tunnels"`
	Workers          []WorkerStats     `json:"workers"`
}

// TunnelStats describes one tunnel pair.
type TunnelStats struct {
	EndpointID  string    `json:"endpoint_id"` // vpce-<17 hex>
	In          string    `json:"in"`
	Out         string    `json:"out"`
	Slot        uint16    `json:"slot"`
	State       string    `json:"state"`
	Created     time.Time `json:"created"`
	IdleSeconds float64   `json:"idle_seconds"`
	PacketsIn   uint64    `json:"packets_in"` // from GWLB
	BytesIn     uint64    `json:"bytes_in"`
	PacketsOut  uint64    `json:"packets_out"` // back to GWLB
	BytesOut    uint64    `json:"bytes_out"`
	LearnFailed uint64    `json:"learn_failed"`
	// TunWrites and TunReads count tun system calls; with offloads one
	// carries many packets (PacketsIn/TunWrites is the merge factor).
	TunWrites uint64     `json:"tun_writes"`
	TunReads  uint64     `json:"tun_reads"`
	Flows     flow.Stats `json:"flows"`
	// Datapath is "ebpf" once the in-kernel datapath carries the tunnel
	// (just after it comes up), else "userspace".
	Datapath string `json:"datapath"`
	// FastpathPacketsIn and FastpathPacketsOut are the part of PacketsIn
	// and PacketsOut the in-kernel datapath carried (since the tunnel
	// came up on it).
	FastpathPacketsIn  uint64 `json:"fastpath_packets_in"`
	FastpathPacketsOut uint64 `json:"fastpath_packets_out"`
}

// WorkerStats describes one worker.
type WorkerStats struct {
	ID       int       `json:"id"`
	LastLoop time.Time `json:"last_loop"`
	Alive    bool      `json:"alive"`
	Drops    uint64    `json:"drops"`
}

func (t *tunnel) counters() TunnelStats {
	s := TunnelStats{
		EndpointID: "vpce-" + t.hex,
		In:         t.pair.In,
		Out:        t.pair.Out,
		Slot:       t.pair.Slot,
		Created:    t.createdAt,
	}
	if st := t.state.Load(); int(st) < len(stateNames) {
		s.State = stateNames[st]
	}
	for i := range t.ctr {
		c := &t.ctr[i]
		s.PacketsIn += c.inPackets.Load()
		s.BytesIn += c.inBytes.Load()
		s.PacketsOut += c.outPackets.Load()
		s.BytesOut += c.outBytes.Load()
		s.LearnFailed += c.learnFailed.Load()
		s.TunWrites += c.tunWrites.Load()
		s.TunReads += c.tunReads.Load()
	}
	s.Datapath = DatapathUserspace
	if t.fast.Load() {
		s.Datapath = DatapathEBPF
		f := t.d.fp.Tunnel(t.pair.Slot)
		s.PacketsIn += f.InPackets
		s.BytesIn += f.InBytes
		s.PacketsOut += f.OutPackets
		s.BytesOut += f.OutBytes
		s.FastpathPacketsIn, s.FastpathPacketsOut = f.InPackets, f.OutPackets
	}
	return s
}

// Stats returns per-tunnel and per-worker counters and drops by reason.
func (d *Daemon) Stats() Stats {
	s := Stats{
		Running:          d.running.Load(),
		Listen:           d.cfg.Listen.String(),
		TunnelsCreated:   d.created.Load(),
		TunnelsDestroyed: d.destroyed.Load(),
		TunnelFailures:   d.failures.Load(),
		HookFailures:     d.hookFailures.Load(),
		PendingQueued:    d.pendingQueued.Load(),
		Drops:            map[string]uint64{},
		Datapath:         DatapathUserspace,
	}
	if d.fp != nil {
		s.Datapath = DatapathEBPF
		s.FastpathPassed = map[string]uint64{}
		c := d.fp.Counters()
		for i := range c {
			if fastpath.IsPass(i) && c[i] != 0 {
				s.FastpathPassed[fastpath.ReasonName(i)] = c[i]
			}
		}
	}
	for i, v := range d.dropTotals() {
		if v != 0 {
			s.Drops[dropNames[i]] = v
		}
	}
	now := time.Now()
	for _, t := range d.snapshot() {
		ts := t.counters()
		ts.IdleSeconds = now.Sub(time.Unix(0, t.lastActive.Load())).Seconds()
		ts.Flows = t.flows.Stats()
		s.Tunnels = append(s.Tunnels, ts)
	}
	sort.Slice(s.Tunnels, func(i, j int) bool { return s.Tunnels[i].In < s.Tunnels[j].In })
	for _, w := range d.workers {
		ws := WorkerStats{ID: w.id, LastLoop: time.Unix(0, w.lastLoop.Load())}
		select {
		case <-w.done:
		default:
			ws.Alive = s.Running && now.Sub(ws.LastLoop) <= heartbeatStale
		}
		for i := range w.drops {
			ws.Drops += w.drops[i].Load()
		}
		s.Workers = append(s.Workers, ws)
	}
	return s
}
