//go:build linux

package steer

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
)

// Rule attribution carried by the kernel. The allow verdict of every
// network policy rule (and of an allowing default) sets the rule's id in
// the conntrack mark of the flow's first packet:
//
//	ct mark = mark_base (ours, 16 bits) | rule id | tunnel slot
//
// The slot keeps the low bits.Len(max_tunnels) bits, which is all routing
// uses (the mark copied to packets is masked with mark_base|slot mask, the
// ip rules match it exactly); the rule id takes the bits between. Conntrack
// destroy events carry the mark (not labels: ctnetlink leaves labels out
// of destroy events), so a flow record names the rule that allowed the
// flow when it was allowed, whatever the policy or a domain's answers are
// when it ends.
//
// Ids are stable across reloads: a rule whose definition (name, action
// and every criterion) is unchanged keeps its id; a new or changed rule
// gets an id no live rule has, preferring one never used, then the one
// released longest ago, so flows of a rule removed by a reload are still
// attributed to it for as long as possible (until its id is reused: with
// the default 127 ids, only after more than 127 distinct rule
// definitions). Ids start at 1 in rule order at each start; 0 means none
// (a flow allowed with no network policy active, or older than the mark
// layout).

// ruleRef is what a rule id stands for.
type ruleRef struct {
	name    string
	version string // network policy version that last contained the definition
	def     string // definition key
	live    bool   // in the policy in force
	freed   uint64 // generation that dropped it (when !live)
}

// ruleIDs is the id table. Readers (flow records) take the read lock.
type ruleIDs struct {
	mu    sync.RWMutex
	refs  []ruleRef // index = id; refs[0] unused
	byDef map[string]uint16
	gen   uint64
	max   int
}

// ruleDef is the definition key of rule r (or of the default action).
func ruleDef(r *NetRule) string {
	b, _ := json.Marshal(struct {
		N, A, P    string
		E, D       []string
		C, T, Port any
	}{r.Name, r.Action, r.Protocol, r.Endpoints, r.Domains, r.Clients, r.Destinations, r.Ports})
	return string(b)
}

func defaultDef(action string) string { return "\x00default:" + action }

// Version is the network policy's version: the first 12 hex digits of a
// SHA-256 of its effective definition (default action, rules in order,
// log group). Flow records carry it as policy_version.
func (p *NetworkPolicy) Version() string {
	def := p.DefaultAction
	if def == "" {
		def = NetAllow
	}
	h := sha256.New()
	h.Write([]byte(defaultDef(def)))
	for i := range p.Rules {
		h.Write([]byte{0})
		h.Write([]byte(ruleDef(&p.Rules[i])))
	}
	h.Write([]byte{byte(p.LogGroup >> 8), byte(p.LogGroup)})
	return "np-" + hex.EncodeToString(h.Sum(nil))[:12]
}

// assignment is the ids of one policy: one per rule, and the default's.
type assignment struct {
	rules []uint16
	def   uint16
}

// plan computes the ids policy p would get, without changing the table
// (commit does, once the kernel took the rules). ok is false when there
// are not enough ids (Validate prevents that).
func (t *ruleIDs) plan(p *NetworkPolicy) (assignment, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var a assignment
	taken := map[uint16]bool{}
	defs := make([]string, 0, len(p.Rules)+1)
	for i := range p.Rules {
		defs = append(defs, ruleDef(&p.Rules[i]))
	}
	def := p.DefaultAction
	if def == "" {
		def = NetAllow
	}
	defs = append(defs, defaultDef(def))
	ids := make([]uint16, len(defs))
	// Unchanged definitions keep their ids.
	for i, d := range defs {
		if id, ok := t.byDef[d]; ok && !taken[id] {
			ids[i] = id
			taken[id] = true
		}
	}
	for i := range defs {
		if ids[i] != 0 {
			continue
		}
		id := t.freeID(taken)
		if id == 0 {
			return a, false
		}
		ids[i] = id
		taken[id] = true
	}
	a.rules, a.def = ids[:len(p.Rules)], ids[len(p.Rules)]
	return a, true
}

// freeID picks an id for a new definition: never used, else released
// longest ago; not in taken (nor live: a live id not in taken belongs to a
// rule of the policy being replaced, whose flows still carry it).
func (t *ruleIDs) freeID(taken map[uint16]bool) uint16 {
	if len(t.refs) <= t.max {
		for id := max(len(t.refs), 1); id <= t.max; id++ {
			if !taken[uint16(id)] {
				return uint16(id)
			}
		}
	}
	var best uint16
	var bestGen uint64
	for id := 1; id < len(t.refs); id++ {
		r := &t.refs[id]
		if taken[uint16(id)] || r.live {
			continue
		}
		if best == 0 || r.freed < bestGen {
			best, bestGen = uint16(id), r.freed
		}
	}
	if best != 0 {
		return best
	}
	// Every id is live in the policy being replaced: take one of those
	// not kept (its flows are then attributed to the new rule).
	for id := 1; id <= t.max; id++ {
		if !taken[uint16(id)] {
			return uint16(id)
		}
	}
	return 0
}

// commit makes a the policy in force.
func (t *ruleIDs) commit(p *NetworkPolicy, a assignment, version string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gen++
	if t.byDef == nil {
		t.byDef = map[string]uint16{}
	}
	for id := range t.refs {
		if t.refs[id].live {
			t.refs[id].live, t.refs[id].freed = false, t.gen
		}
	}
	set := func(id uint16, name, def string) {
		for int(id) >= len(t.refs) {
			t.refs = append(t.refs, ruleRef{})
		}
		if old := t.refs[id].def; old != "" && old != def && t.byDef[old] == id {
			delete(t.byDef, old)
		}
		t.refs[id] = ruleRef{name: name, version: version, def: def, live: true}
		t.byDef[def] = id
	}
	for i := range p.Rules {
		set(a.rules[i], p.Rules[i].Name, ruleDef(&p.Rules[i]))
	}
	def := p.DefaultAction
	if def == "" {
		def = NetAllow
	}
	set(a.def, DefaultRuleName, defaultDef(def))
}

// lookup returns the rule name and policy version of id.
func (t *ruleIDs) lookup(id uint16) (string, string, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if id == 0 || int(id) >= len(t.refs) || t.refs[id].def == "" {
		return "", "", false
	}
	r := &t.refs[id]
	return r.name, r.version, true
}

// isLive reports whether id belongs to a rule of the policy in force.
func (t *ruleIDs) isLive(id uint16) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return int(id) < len(t.refs) && t.refs[id].live
}

// validateRuleIDs checks that the tunnel slots leave room in the
// conntrack mark for an id per network policy rule (ruleid.go).
func (c *Config) validateRuleIDs() []error {
	if c.MaxTunnels < 1 || c.MaxTunnels > maxSlot {
		return []error{fmt.Errorf("max_tunnels (tunnel.max_tunnels, copied in): %d out of range 1..%d", c.MaxTunnels, maxSlot)}
	}
	if need, room := len(c.NetworkPolicy.Rules)+1, c.maxRuleID(); c.NetworkPolicy.active() && need > room {
		return []error{fmt.Errorf("network_policy.rules: %d rules and the default need %d rule ids in the conntrack mark; with tunnel.max_tunnels %d only %d fit (%d bits left of 16): lower tunnel.max_tunnels or merge rules",
			len(c.NetworkPolicy.Rules), need, c.MaxTunnels, room, 16-c.slotBits())}
	}
	return nil
}
