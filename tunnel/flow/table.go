package flow

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

// numShards spreads the table over independent locks so the tunnel's
// workers rarely contend.
const numShards = 64

// Timeout classes, each with its own LRU list per shard: within a class
// every entry has the same timeout, so the least recently seen entry is
// always the first to expire and expiry only ever looks at list heads.
const (
	classTCP = iota
	classOther
	classFrag
	numClasses
)

// TableConfig configures a Table.
type TableConfig struct {
	// MaxEntries bounds flows plus fragment mappings. Each entry costs
	// about 400 bytes (it reserves room for the largest GENEVE header).
	MaxEntries int `yaml:"max_entries"`
	// TCPTimeout is the idle timeout of TCP flows. It must match the GWLB
	// target group's TCP idle timeout (350 s unless changed there).
	TCPTimeout time.Duration `yaml:"tcp_timeout"`
	// OtherTimeout is the idle timeout of all other flows (GWLB: 120 s).
	OtherTimeout time.Duration `yaml:"other_timeout"`
	// FragmentTimeout is how long a first fragment's mapping lets later
	// fragments of the same datagram find their flow.
	FragmentTimeout time.Duration `yaml:"fragment_timeout"`
	// Now is the clock used by Run; nil means time.Now.
	Now func() time.Time `yaml:"-"`
}

// DefaultTableConfig returns GWLB's timeouts and a 262144-entry bound.
func DefaultTableConfig() TableConfig {
	return TableConfig{
		MaxEntries:      262144,
		TCPTimeout:      350 * time.Second,
		OtherTimeout:    120 * time.Second,
		FragmentTimeout: 30 * time.Second,
	}
}

// Validate checks the configuration; messages start with the yaml key.
func (c TableConfig) Validate() error {
	switch {
	case c.MaxEntries < numShards || c.MaxEntries > 1<<26:
		return fmt.Errorf("max_entries: %d out of range %d..%d", c.MaxEntries, numShards, 1<<26)
	case c.TCPTimeout < 60*time.Second || c.TCPTimeout > 6000*time.Second:
		return fmt.Errorf("tcp_timeout: %s out of range 60s..6000s (the GWLB target group's range)", c.TCPTimeout)
	case c.OtherTimeout < time.Second || c.OtherTimeout > 6000*time.Second:
		return fmt.Errorf("other_timeout: %s out of range 1s..6000s", c.OtherTimeout)
	case c.FragmentTimeout < time.Second || c.FragmentTimeout > 120*time.Second:
		return fmt.Errorf("fragment_timeout: %s out of range 1s..120s", c.FragmentTimeout)
	}
	return nil
}

// Entry is a flow's state, copied out of the table by Lookup.
type Entry struct {
	// Key is the flow key.
	Key Key
	// EndpointID is the GWLB endpoint the flow arrived from.
	EndpointID uint64
	// GWLB is the outer source address and port of the newest GENEVE
	// packet of the flow: where return traffic goes (to port 6081, from
	// this port).
	GWLB netip.AddrPort
	// Local is the local address the GENEVE packet arrived on, the outer
	// source for return traffic.
	Local netip.Addr
	// LastSeen is when a packet of the flow was last learned or looked up.
	LastSeen time.Time

	hdr    [geneve.MaxHeaderLen]byte
	hdrLen uint16
}

// SetHeader stores h (at most geneve.MaxHeaderLen bytes are kept) as the
// entry's GENEVE header: for entries built outside a Table, such as a flow
// the in-kernel fast path learned.
func (e *Entry) SetHeader(h []byte) {
	e.hdrLen = uint16(copy(e.hdr[:], h))
}

// Header returns the GENEVE header (with options) to put on return traffic:
// that of the newest packet GWLB sent for the flow. It aliases e.
func (e *Entry) Header() []byte { return e.hdr[:e.hdrLen] }

type slot struct {
	e      Entry
	target Key   // classFrag: the flow this fragment key belongs to
	last   int64 // ns since table epoch
	prev   int32
	next   int32
	class  uint8
}

type list struct{ head, tail int32 }

type shardStats struct {
	learned, refreshed, orphans, expired, full uint64
	flows, frags                               int
}

type shard struct {
	mu    sync.Mutex
	m     map[Key]int32
	slots []slot
	free  int32 // free list through slot.next, -1 when empty
	lists [numClasses]list
	stats shardStats
	_     [64]byte // keep hot shards on separate cache lines
}

// Table is a sharded, bounded flow table safe for concurrent use.
type Table struct {
	cfg      TableConfig
	epoch    time.Time
	timeouts [numClasses]int64
	n        atomic.Int64 // entries in all shards
	cursor   atomic.Uint32
	shards   [numShards]shard
}

// NewTable returns an empty table. cfg should have passed Validate;
// zero fields take their defaults.
func NewTable(cfg TableConfig) *Table {
	def := DefaultTableConfig()
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = def.MaxEntries
	}
	if cfg.TCPTimeout <= 0 {
		cfg.TCPTimeout = def.TCPTimeout
	}
	if cfg.OtherTimeout <= 0 {
		cfg.OtherTimeout = def.OtherTimeout
	}
	if cfg.FragmentTimeout <= 0 {
		cfg.FragmentTimeout = def.FragmentTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := &Table{cfg: cfg, epoch: cfg.Now()}
	t.timeouts = [numClasses]int64{int64(cfg.TCPTimeout), int64(cfg.OtherTimeout), int64(cfg.FragmentTimeout)}
	// Small initial maps: the tunnel keeps one table per GWLB endpoint,
	// most of them small; maps grow on insert, never on refresh.
	hint := min(cfg.MaxEntries/numShards, 16)
	for i := range t.shards {
		s := &t.shards[i]
		s.m = make(map[Key]int32, hint)
		s.free = -1
		for c := range s.lists {
			s.lists[c] = list{-1, -1}
		}
	}
	return t
}

func (t *Table) shard(k *Key) *shard { return &t.shards[k.Hash()%numShards] }

func (t *Table) since(now time.Time) int64 { return int64(now.Sub(t.epoch)) }

func classOf(k *Key) uint8 {
	switch {
	case k.IsFragment():
		return classFrag
	case k.proto == ProtoTCP:
		return classTCP
	}
	return classOther
}

// Learn records a packet that arrived from GWLB: it inserts the flow or
// refreshes it with the newest GENEVE header (GWLB may give a reused
// 5-tuple a new cookie), GWLB address and local address. For a first
// fragment it also maps info.FragKey to the flow; a non-first fragment
// (k.IsFragment()) refreshes the flow its first fragment mapped it to. It
// returns false when nothing was stored: the table is full, or a
// fragment's flow is unknown. The packet may still be forwarded; its
// return traffic just cannot be matched.
func (t *Table) Learn(k Key, info Info, h *geneve.Header, gwlb netip.AddrPort, local netip.Addr, now time.Time) bool {
	ts := t.since(now)
	k, ok := t.flowKey(k)
	if !ok {
		return false
	}
	s := t.shard(&k)
	s.mu.Lock()
	i, ok := s.m[k]
	if ok {
		s.touch(i, ts)
		s.stats.refreshed++
	} else if i, ok = t.insert(s, k, ts); !ok {
		s.mu.Unlock()
		return false
	} else {
		s.stats.learned++
	}
	e := &s.slots[i].e
	e.hdrLen = uint16(copy(e.hdr[:], h.Raw))
	e.EndpointID = h.EndpointID
	e.GWLB = gwlb
	e.Local = local
	s.mu.Unlock()
	if info.FirstFragment {
		t.alias(info.FragKey, k, ts)
	}
	return true
}

// Lookup finds the flow of a packet about to be returned to GWLB, copies it
// into dst and marks it seen now: traffic in either direction keeps a flow
// alive. A fragment key is resolved through its first fragment's mapping,
// and a first fragment (info.FirstFragment) records one so the datagram's
// later fragments find the flow too.
func (t *Table) Lookup(k Key, info Info, dst *Entry, now time.Time) bool {
	ts := t.since(now)
	k, ok := t.flowKey(k)
	if !ok {
		return false
	}
	s := t.shard(&k)
	s.mu.Lock()
	i, ok := s.m[k]
	if !ok {
		s.mu.Unlock()
		return false
	}
	s.touch(i, ts)
	sl := &s.slots[i]
	copyEntry(dst, &sl.e)
	dst.LastSeen = t.epoch.Add(time.Duration(ts))
	s.mu.Unlock()
	if info.FirstFragment {
		t.alias(info.FragKey, k, ts)
	}
	return true
}

// copyEntry copies only the used part of the header array.
func copyEntry(dst, src *Entry) {
	dst.Key, dst.EndpointID, dst.GWLB, dst.Local = src.Key, src.EndpointID, src.GWLB, src.Local
	dst.hdrLen = uint16(copy(dst.hdr[:], src.hdr[:src.hdrLen]))
}

// flowKey is k itself, or for a non-first fragment the key of the flow its
// first fragment mapped it to.
func (t *Table) flowKey(k Key) (Key, bool) {
	if !k.IsFragment() {
		return k, true
	}
	return t.resolve(k)
}

// resolve maps a fragment key to its flow key.
func (t *Table) resolve(frag Key) (Key, bool) {
	s := t.shard(&frag)
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.m[frag]
	if !ok {
		s.stats.orphans++
		return Key{}, false
	}
	return s.slots[i].target, true
}

// reserve counts one more entry if the bound allows it.
func (t *Table) reserve() bool {
	if t.n.Add(1) > int64(t.cfg.MaxEntries) {
		t.n.Add(-1)
		return false
	}
	return true
}

// alias maps a fragment key to a flow key.
func (t *Table) alias(frag, flow Key, ts int64) {
	if !frag.IsFragment() {
		return
	}
	s := t.shard(&frag)
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.m[frag]
	if ok {
		s.touch(i, ts)
	} else if i, ok = t.insert(s, frag, ts); !ok {
		return
	}
	s.slots[i].target = flow
}

// insert adds k to s (locked) and returns its slot.
func (t *Table) insert(s *shard, k Key, ts int64) (int32, bool) {
	if !t.reserve() {
		// Make room from this shard's own expired entries before refusing.
		if t.expireShard(s, ts, 8) == 0 || !t.reserve() {
			s.stats.full++
			return -1, false
		}
	}
	var i int32
	if s.free >= 0 {
		i = s.free
		s.free = s.slots[i].next
	} else {
		s.slots = append(s.slots, slot{})
		i = int32(len(s.slots) - 1)
	}
	sl := &s.slots[i]
	*sl = slot{class: classOf(&k), prev: -1, next: -1, last: ts}
	sl.e.Key = k
	s.pushTail(i)
	s.m[k] = i
	if sl.class == classFrag {
		s.stats.frags++
	} else {
		s.stats.flows++
	}
	return i, true
}

func (s *shard) pushTail(i int32) {
	sl := &s.slots[i]
	l := &s.lists[sl.class]
	sl.prev, sl.next = l.tail, -1
	if l.tail >= 0 {
		s.slots[l.tail].next = i
	} else {
		l.head = i
	}
	l.tail = i
}

func (s *shard) unlink(i int32) {
	sl := &s.slots[i]
	l := &s.lists[sl.class]
	if sl.prev >= 0 {
		s.slots[sl.prev].next = sl.next
	} else {
		l.head = sl.next
	}
	if sl.next >= 0 {
		s.slots[sl.next].prev = sl.prev
	} else {
		l.tail = sl.prev
	}
	sl.prev, sl.next = -1, -1
}

// touch marks slot i seen at ts and moves it to the tail of its list.
func (s *shard) touch(i int32, ts int64) {
	sl := &s.slots[i]
	if ts > sl.last {
		sl.last = ts
	}
	if s.lists[sl.class].tail != i {
		s.unlink(i)
		s.pushTail(i)
	}
}

// expireShard removes up to budget expired entries from s (locked).
func (t *Table) expireShard(s *shard, ts int64, budget int) int {
	n := 0
	for c := range s.lists {
		for n < budget {
			i := s.lists[c].head
			if i < 0 || ts-s.slots[i].last < t.timeouts[c] {
				break
			}
			s.unlink(i)
			sl := &s.slots[i]
			delete(s.m, sl.e.Key)
			if sl.class == classFrag {
				s.stats.frags--
			} else {
				s.stats.flows--
			}
			*sl = slot{prev: -1, next: s.free}
			s.free = i
			t.n.Add(-1)
			n++
		}
	}
	s.stats.expired += uint64(n)
	return n
}

// Expire removes up to budget entries idle past their timeout at now and
// returns how many it removed. It visits shards round robin from where the
// previous call stopped and holds one shard lock at a time, so it can run
// often with a small budget without stalling the data path.
func (t *Table) Expire(now time.Time, budget int) int {
	ts := t.since(now)
	start := t.cursor.Add(1)
	n := 0
	for j := uint32(0); j < numShards && n < budget; j++ {
		s := &t.shards[(start+j)%numShards]
		s.mu.Lock()
		n += t.expireShard(s, ts, budget-n)
		s.mu.Unlock()
	}
	return n
}

// Run expires idle entries every interval until ctx is done.
func (t *Table) Run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			for t.Expire(t.cfg.Now(), 4096) == 4096 {
				if ctx.Err() != nil {
					return
				}
			}
		}
	}
}

// Len returns the number of entries (flows and fragment mappings).
func (t *Table) Len() int { return int(t.n.Load()) }

// Stats are cumulative table counters.
type Stats struct {
	Flows     int    `json:"flows"`            // live flows
	Fragments int    `json:"fragment_maps"`    // live fragment mappings
	Learned   uint64 `json:"learned"`          // flows inserted
	Refreshed uint64 `json:"refreshed"`        // Learn calls that refreshed a flow
	Orphans   uint64 `json:"orphan_fragments"` // fragments whose first fragment was never seen
	Expired   uint64 `json:"expired"`          // entries removed by expiry
	Full      uint64 `json:"full"`             // inserts refused because the table was full
}

// Stats sums the shards' counters.
func (t *Table) Stats() Stats {
	var st Stats
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		st.Flows += s.stats.flows
		st.Fragments += s.stats.frags
		st.Learned += s.stats.learned
		st.Refreshed += s.stats.refreshed
		st.Orphans += s.stats.orphans
		st.Expired += s.stats.expired
		st.Full += s.stats.full
		s.mu.Unlock()
	}
	return st
}
