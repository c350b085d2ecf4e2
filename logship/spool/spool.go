// Package spool is the log shipper's write-ahead queue: records are framed
// (length, CRC32C, sequence, timestamp), appended to segment files and
// fsynced in groups, read back in order by one reader, and deleted a whole
// segment at a time once every record in it has been acknowledged.
//
// The spool is what makes shipping lossless across CloudWatch outages,
// throttling and crashes: a record is acknowledged only after the sink
// accepted it (or it was dead-lettered), and whatever was not acknowledged
// is replayed when the process starts again. Replay validates every frame
// and truncates a torn tail left by kill -9 or power loss.
//
// With an empty directory the spool keeps its segments in memory: same
// bounds, same ordering and acknowledgement, no durability (for the stdout
// sink and for benchmarks).
package spool

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrFull is returned by Append when the record would take the spool over
// its size cap (or the in-memory write buffer over its bound).
var ErrFull = errors.New("spool full")

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("spool closed")

// Config sizes a spool. Zero values get defaults (see withDefaults).
type Config struct {
	// Dir holds the segment files; empty keeps segments in memory.
	Dir string
	// MaxBytes caps the framed bytes on disk plus the write buffer.
	MaxBytes int64
	// SegmentBytes is the size at which a segment is sealed and a new one
	// started. Smaller segments free space sooner after acknowledgement.
	SegmentBytes int64
	// MaxPending bounds the in-memory group-commit buffer; when the disk
	// falls this far behind, Append reports ErrFull rather than grow.
	MaxPending int
	// SyncInterval is the group-commit period: written data is fsynced at
	// least this often.
	SyncInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.MaxBytes <= 0 {
		c.MaxBytes = 512 << 20
	}
	if c.SegmentBytes <= 0 {
		c.SegmentBytes = min(max(c.MaxBytes/16, 64<<10), 16<<20)
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 16 << 20
	}
	if c.SyncInterval <= 0 {
		c.SyncInterval = 200 * time.Millisecond
	}
	return c
}

// segment is one file (or memory buffer) of consecutive frames.
type segment struct {
	first  uint64 // sequence of the first frame (the file's name)
	next   uint64 // one past the last sequence written
	size   int64  // readable bytes, including the file header
	sealed bool   // no more writes; may be deleted once acknowledged
	path   string
	f      *os.File // write handle of the active file segment
	mem    []byte   // memory mode: the frames
}

type checkpoint struct {
	seq uint64
	at  time.Time
}

// Stats is a snapshot of the spool's counters.
type Stats struct {
	Bytes         int64  `json:"bytes"`
	Segments      int    `json:"segments"`
	NextSeq       uint64 `json:"next_seq"`
	AckedBelow    uint64 `json:"acked_below"`
	Replayed      uint64 `json:"replayed"`
	TornFrames    uint64 `json:"torn_frames"`
	TornBytes     int64  `json:"torn_bytes"`
	Syncs         uint64 `json:"syncs"`
	AckSaves      uint64 `json:"ack_saves"`
	AckSyncs      uint64 `json:"ack_syncs"`
	AckSaveErrors uint64 `json:"ack_save_errors"`
	WriteErrors   uint64 `json:"write_errors"`
	Full          bool   `json:"full"`
	OldestUnacked string `json:"oldest_unacked"`
}

// Spool is safe for concurrent Append and Ack; Read must be called from a
// single goroutine.
type Spool struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	closed    bool
	segs      []*segment // oldest first; the last is the active one
	pend      []byte     // frames appended but not yet written (file mode)
	spare     []byte
	pendN     uint64 // frames in pend
	nextSeq   uint64
	bytes     int64 // segment bytes plus len(pend)
	acked     uint64
	ackedOOO  map[uint64]uint64 // out-of-order acknowledged ranges from->to
	cps       []checkpoint
	replayed  uint64
	torn      uint64
	tornBytes int64
	syncs     uint64
	writeErrs uint64
	full      bool
	syncWait  []chan error

	// File mode: the acknowledged position on disk (ackpos.go). durable is
	// the sequence below which every frame is fsynced; the saved position
	// never passes it. Written only by the writer goroutine.
	ackf     *ackFile
	durable  uint64
	ackSaved ackState
	// skip are ranges acknowledged out of order before the restart; the
	// reader passes over them. Set by Open, emptied once acked passes them.
	skip      []ackRange
	ackSaves  uint64
	ackSyncs  uint64
	ackErrs   uint64
	ackDirty  bool      // written since the last fsync of the ack file
	ackSynced time.Time // last fsync of the ack file
	ackWanted bool

	// hold (hold.go): segments with frames at or above hold are kept
	// until holdUntil, for a producer's ScanFrom after a restart.
	hold      uint64
	holdUntil time.Time
	holdf     *os.File

	ready chan struct{} // reader wake-up, capacity 1
	wake  chan struct{} // writer wake-up, capacity 1
	stop  chan struct{}
	done  chan struct{}

	r reader
}

// Open opens (or creates) the spool, validates and indexes any segments
// left by a previous run, and starts the writer.
func Open(cfg Config, log *slog.Logger) (*Spool, error) {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Spool{
		cfg:      cfg,
		log:      log,
		ackedOOO: make(map[uint64]uint64),
		hold:     noHold,
		ready:    make(chan struct{}, 1),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if cfg.Dir == "" {
		s.segs = []*segment{{mem: make([]byte, 0, 64<<10)}}
		close(s.done)
		return s, nil
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool %s: %w", cfg.Dir, err)
	}
	af, saved, haveSaved, err := openAckFile(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("spool %s: acknowledged position: %w", cfg.Dir, err)
	}
	s.ackf = af
	if err := s.recover(); err != nil {
		af.close()
		return nil, fmt.Errorf("spool %s: %w", cfg.Dir, err)
	}
	s.acked = s.nextSeq
	if len(s.segs) > 0 {
		s.acked = s.segs[0].first
	}
	if haveSaved {
		// Sequences are never reused: after every segment was acknowledged
		// and deleted, numbering continues above the saved position.
		s.nextSeq = max(s.nextSeq, saved.pos)
		s.acked = max(s.acked, saved.pos)
		for _, r := range saved.ranges {
			if r.from > s.acked && r.to <= s.nextSeq {
				s.skip = append(s.skip, r)
				s.ackedOOO[r.from] = r.to
			}
		}
	}
	if s.replayed > 0 {
		s.replayed = s.nextSeq - s.acked
		for _, r := range s.skip {
			s.replayed -= r.to - r.from
		}
	}
	if s.replayed > 0 {
		s.log.Info("spool: replaying unacknowledged records", "records", s.replayed,
			"first_unacked", s.acked, "acked_ranges", len(s.skip), "bytes", s.bytes,
			"segments", len(s.segs), "torn_frames", s.torn)
	}
	s.durable = s.nextSeq
	s.ackSaved = ackState{pos: s.acked, ranges: append([]ackRange(nil), s.skip...)}
	if err := s.newSegment(s.nextSeq); err != nil {
		af.close()
		return nil, fmt.Errorf("spool %s: %w", cfg.Dir, err)
	}
	s.hold, s.holdUntil = readHold(cfg.Dir), time.Now().Add(holdTTL)
	s.mu.Lock()
	s.reap() // segments wholly below the saved position (and any hold)
	s.mu.Unlock()
	go s.writer()
	return s, nil
}

func segName(seq uint64) string { return fmt.Sprintf("%016x.seg", seq) }

// recover indexes existing segments, truncating torn or corrupt tails.
func (s *Spool) recover() error {
	ents, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".seg") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var firstTS int64
	for _, name := range names {
		first, err := strconv.ParseUint(strings.TrimSuffix(name, ".seg"), 16, 64)
		if err != nil {
			s.log.Warn("spool: ignoring file with a foreign name", "file", name)
			continue
		}
		if first < s.nextSeq {
			s.log.Error("spool: segment overlaps its predecessor, skipping", "file", name)
			continue
		}
		seg, ts, err := s.scan(filepath.Join(s.cfg.Dir, name), first)
		if err != nil {
			return err
		}
		if seg == nil {
			continue
		}
		if len(s.segs) == 0 {
			firstTS = ts
		}
		s.segs = append(s.segs, seg)
		s.bytes += seg.size
		s.nextSeq = seg.next
		s.replayed += seg.next - seg.first
	}
	if len(s.segs) > 0 {
		s.cps = append(s.cps, checkpoint{seq: s.segs[0].first, at: time.UnixMilli(firstTS)})
	}
	return nil
}

// scan validates one segment file. Frames after the first bad one are
// unreachable (there is no resynchronisation marker), so the file is cut
// there: a torn tail is the expected result of a crash mid-write.
func (s *Spool) scan(path string, first uint64) (*segment, int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	good := int64(len(segMagic))
	next := first
	var ts0 int64
	var bad error
	if len(data) < len(segMagic) || [8]byte(data[:8]) != segMagic {
		bad, good = errBadHead, 0
	} else {
		for off := len(segMagic); off < len(data); {
			seq, ts, _, n, err := decodeFrame(data[off:])
			if err == nil && seq != next {
				err = errSeq
			}
			if err != nil {
				bad = err
				break
			}
			if next == first {
				ts0 = ts
			}
			next++
			off += n
			good = int64(off)
		}
	}
	if bad != nil {
		s.torn++
		s.tornBytes += int64(len(data)) - good
		s.log.Warn("spool: torn or corrupt frame, truncating segment", "file", path,
			"offset", good, "discarded_bytes", int64(len(data))-good, "err", bad)
	}
	if next == first {
		if err := os.Remove(path); err != nil {
			return nil, 0, err
		}
		return nil, 0, nil
	}
	if bad != nil {
		if err := os.Truncate(path, good); err != nil {
			return nil, 0, err
		}
	}
	return &segment{first: first, next: next, size: good, sealed: true, path: path}, ts0, nil
}

// newSegment creates the active file segment starting at seq.
func (s *Spool) newSegment(seq uint64) error {
	path := filepath.Join(s.cfg.Dir, segName(seq))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(segMagic[:]); err != nil {
		f.Close()
		return err
	}
	if err := syncDir(s.cfg.Dir); err != nil {
		f.Close()
		return err
	}
	seg := &segment{first: seq, next: seq, size: int64(len(segMagic)), path: path, f: f}
	s.mu.Lock()
	s.segs = append(s.segs, seg)
	s.bytes += seg.size
	s.mu.Unlock()
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Append frames one record and queues it for the next group commit. The
// payload is copied. It returns the record's sequence number.
func (s *Spool) Append(ts int64, payload []byte) (uint64, error) {
	n := int64(frameHeader + len(payload))
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, ErrClosed
	}
	if s.bytes+n > s.cfg.MaxBytes || len(s.pend)+int(n) > s.cfg.MaxPending && len(s.pend) > 0 {
		s.full = true
		s.mu.Unlock()
		return 0, ErrFull
	}
	seq := s.nextSeq
	s.nextSeq++
	s.bytes += n
	s.full = false
	if len(s.cps) == 0 || s.cps[len(s.cps)-1].seq < s.acked {
		s.cps = append(s.cps, checkpoint{seq: seq, at: time.Now()})
	} else if now := time.Now(); now.Sub(s.cps[len(s.cps)-1].at) >= 100*time.Millisecond {
		s.cps = append(s.cps, checkpoint{seq: seq, at: now})
	}
	if s.cfg.Dir == "" {
		act := s.segs[len(s.segs)-1]
		if act.size > 0 && act.size+n > s.cfg.SegmentBytes {
			act.sealed = true
			act = &segment{first: seq, next: seq, mem: make([]byte, 0, s.cfg.SegmentBytes)}
			s.segs = append(s.segs, act)
		}
		act.mem = appendFrame(act.mem, seq, ts, payload)
		act.size = int64(len(act.mem))
		act.next = seq + 1
		s.mu.Unlock()
		notify(s.ready)
		return seq, nil
	}
	s.pend = appendFrame(s.pend, seq, ts, payload)
	s.pendN++
	s.mu.Unlock()
	notify(s.wake)
	return seq, nil
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Ready returns a channel that receives when new records may be readable.
func (s *Spool) Ready() <-chan struct{} { return s.ready }

// writer performs all file I/O for appends: write, group-commit fsync,
// segment rotation.
func (s *Spool) writer() {
	defer close(s.done)
	tick := time.NewTicker(s.cfg.SyncInterval)
	defer tick.Stop()
	dirty := false
	lastSync := time.Now()
	for {
		stopping := false
		var waiters []chan error
		select {
		case <-s.wake:
		case <-tick.C:
		case <-s.stop:
			stopping = true
		}
		s.mu.Lock()
		var buf []byte
		var n uint64
		if len(s.pend) > 0 {
			buf, n = s.pend, s.pendN
			s.pend, s.pendN, s.spare = s.spare[:0], 0, nil
		}
		act := s.segs[len(s.segs)-1]
		waiters, s.syncWait = s.syncWait, nil
		s.mu.Unlock()

		var werr error
		if len(buf) > 0 {
			werr = writeFull(act.f, buf, act.size)
			s.mu.Lock()
			if werr != nil {
				// Keep the frames for the next attempt: nothing is lost
				// or reordered, Append sees ErrFull once the buffer fills.
				s.writeErrs++
				s.pend = append(buf, s.pend...)
				s.pendN += n
				s.mu.Unlock()
				s.log.Error("spool: write failed", "file", act.path, "err", werr)
			} else {
				act.size += int64(len(buf))
				act.next += n
				s.spare = buf[:0]
				s.mu.Unlock()
				dirty = true
				notify(s.ready)
			}
		}
		if dirty && (len(waiters) > 0 || stopping || time.Since(lastSync) >= s.cfg.SyncInterval ||
			act.size >= s.cfg.SegmentBytes) {
			if err := act.f.Sync(); err != nil {
				werr = errors.Join(werr, err)
				s.log.Error("spool: fsync failed", "file", act.path, "err", err)
			} else {
				dirty = false
				lastSync = time.Now()
				s.mu.Lock()
				s.syncs++
				s.mu.Unlock()
			}
		}
		if !dirty { // every frame written so far is fsynced
			s.mu.Lock()
			s.durable = act.next
			s.mu.Unlock()
		}
		s.saveAck(stopping || len(waiters) > 0)
		if werr == nil && !dirty && act.size >= s.cfg.SegmentBytes && !stopping {
			if err := s.rotate(act); err != nil {
				werr = err
				s.log.Error("spool: rotate failed", "file", act.path, "err", err)
			}
		}
		for _, w := range waiters {
			w <- werr
		}
		if stopping {
			act.f.Close()
			s.ackf.close()
			return
		}
	}
}

// writeFull writes b at off. Positional writes make a retry after a
// partial failure overwrite the torn bytes instead of appending after them.
func writeFull(f *os.File, b []byte, off int64) error {
	_, err := f.WriteAt(b, off)
	return err
}

// rotate seals the (synced) active segment and starts the next one.
func (s *Spool) rotate(act *segment) error {
	if err := act.f.Close(); err != nil {
		return err
	}
	s.mu.Lock()
	act.sealed = true
	act.f = nil
	next := act.next
	s.mu.Unlock()
	if err := s.newSegment(next); err != nil {
		return err
	}
	s.mu.Lock()
	s.reap()
	s.mu.Unlock()
	notify(s.ready)
	return nil
}

// Sync writes and fsyncs everything appended so far.
func (s *Spool) Sync() error {
	if s.cfg.Dir == "" {
		return nil
	}
	c := make(chan error, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.syncWait = append(s.syncWait, c)
	s.mu.Unlock()
	notify(s.wake)
	return <-c
}

// Ack acknowledges sequences [from, to): the sink accepted them or they
// were dead-lettered. Segments whose records are all acknowledged are
// deleted. Ranges may arrive out of order; a range may start below the
// acknowledged position (the part below counts as done).
func (s *Spool) Ack(from, to uint64) {
	if to <= from {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// After a restart the batcher's ranges tile the sequence space anew and
	// may begin inside what a restored range already acknowledged.
	from = max(from, min(s.acked, to))
	if from != s.acked {
		if from > s.acked {
			s.ackedOOO[from] = to
			if s.ackf != nil && !s.ackWanted {
				s.ackWanted = true
				notify(s.wake)
			}
		}
		return
	}
	s.acked = to
	if s.ackf != nil && !s.ackWanted {
		s.ackWanted = true
		notify(s.wake)
	}
	for {
		t, ok := s.ackedOOO[s.acked]
		if !ok {
			break
		}
		delete(s.ackedOOO, s.acked)
		s.acked = t
	}
	if len(s.skip) > 0 {
		// After a restart batches are cut anew and may cover a restored
		// range: drop what now lies below the position.
		for k := range s.ackedOOO {
			if k < s.acked {
				delete(s.ackedOOO, k)
			}
		}
		for len(s.skip) > 0 && s.skip[0].to <= s.acked {
			s.skip = s.skip[1:]
		}
	}
	// Drop checkpoints that no longer bound an unacknowledged record.
	i := 0
	for i+1 < len(s.cps) && s.cps[i+1].seq <= s.acked {
		i++
	}
	s.cps = s.cps[i:]
	s.reap()
}

// saveAck writes the acknowledged state if it moved, clamped to the
// fsynced frames, and fsyncs it once per sync interval (or now, with
// force). Called by the writer goroutine only: every acknowledgement since
// the last call is committed by one write.
func (s *Spool) saveAck(force bool) {
	defer s.syncAck(force)
	s.mu.Lock()
	st := ackState{pos: min(s.acked, s.durable)}
	behind := s.acked > st.pos
	for from, to := range s.ackedOOO {
		if from > st.pos && from < s.durable {
			st.ranges = append(st.ranges, ackRange{from, min(to, s.durable)})
		}
		behind = behind || to > s.durable
	}
	s.ackWanted = behind // retry once more frames are durable
	s.mu.Unlock()
	sort.Slice(st.ranges, func(i, j int) bool { return st.ranges[i].from < st.ranges[j].from })
	merged := st.ranges[:0]
	for _, r := range st.ranges { // adjacent batches: one range
		if k := len(merged) - 1; k >= 0 && merged[k].to == r.from {
			merged[k].to = r.to
		} else {
			merged = append(merged, r)
		}
	}
	st.ranges = merged
	if len(st.ranges) > maxAckRanges {
		st.ranges = st.ranges[:maxAckRanges] // the lowest: the rest is only re-sent
	}
	if st.equal(s.ackSaved) {
		return
	}
	err := s.ackf.save(st)
	s.mu.Lock()
	if err != nil {
		s.ackErrs++
		s.ackWanted = true
	} else {
		s.ackSaves++
	}
	s.mu.Unlock()
	if err != nil {
		// Not fatal: a stale position only means more records are sent
		// again after a crash.
		s.log.Error("spool: saving acknowledged position", "err", err)
		return
	}
	s.ackSaved = st
	s.ackDirty = true
}

// syncAck fsyncs the ack file if it was written and the group-commit
// interval passed (or force).
func (s *Spool) syncAck(force bool) {
	if !s.ackDirty || !force && time.Since(s.ackSynced) < s.cfg.SyncInterval {
		return
	}
	if err := s.ackf.sync(); err != nil {
		s.mu.Lock()
		s.ackErrs++
		s.mu.Unlock()
		s.log.Error("spool: fsync of the acknowledged position", "err", err)
		return
	}
	s.ackDirty, s.ackSynced = false, time.Now()
	s.mu.Lock()
	s.ackSyncs++
	s.mu.Unlock()
}

// reap deletes sealed, fully acknowledged segments. Called with mu held.
func (s *Spool) reap() {
	for len(s.segs) > 1 && s.segs[0].sealed && s.segs[0].next <= min(s.acked, s.heldBelow()) {
		seg := s.segs[0]
		if seg.path != "" {
			if err := os.Remove(seg.path); err != nil {
				s.log.Error("spool: removing acknowledged segment", "file", seg.path, "err", err)
				return
			}
		}
		s.bytes -= seg.size
		s.segs[0] = nil
		s.segs = s.segs[1:]
	}
	// Hysteresis: report room again only once a tenth of the cap is free,
	// so a fail-closed health verdict does not flap per record.
	if s.full && s.bytes <= s.cfg.MaxBytes-s.cfg.MaxBytes/10 {
		s.full = false
	}
}

// FirstUnacked is the lowest sequence not yet acknowledged; the reader
// starts there.
func (s *Spool) FirstUnacked() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// Unacked reports how many records are appended but not acknowledged
// (ranges acknowledged out of order do not count).
func (s *Spool) Unacked() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nextSeq - s.acked
	if len(s.ackedOOO) == 0 {
		return n
	}
	rs := make([]ackRange, 0, len(s.ackedOOO))
	for from, to := range s.ackedOOO {
		if from >= s.acked {
			rs = append(rs, ackRange{from, min(to, s.nextSeq)})
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].from < rs[j].from })
	end := s.acked // ranges may overlap after a restart: count their union
	for _, r := range rs {
		from := max(r.from, end)
		if r.to > from {
			n -= r.to - from
			end = r.to
		}
	}
	return n
}

// OldestUnacked returns how long the oldest unacknowledged record has been
// waiting (to checkpoint resolution, 100 ms), or 0 when all are acknowledged.
func (s *Spool) OldestUnacked(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.oldestLocked(now)
}

func (s *Spool) oldestLocked(now time.Time) time.Duration {
	if s.acked >= s.nextSeq || len(s.cps) == 0 {
		return 0
	}
	return max(now.Sub(s.cps[0].at), 0)
}

// Full reports whether an Append was refused for lack of space and not
// enough has been acknowledged since to free a tenth of the cap.
func (s *Spool) Full() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.full
}

// Bytes is the space in use (segments plus write buffer).
func (s *Spool) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}

// Stats returns a snapshot of counters.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Bytes: s.bytes, Segments: len(s.segs), NextSeq: s.nextSeq, AckedBelow: s.acked,
		Replayed: s.replayed, TornFrames: s.torn, TornBytes: s.tornBytes, Syncs: s.syncs,
		AckSaves: s.ackSaves, AckSyncs: s.ackSyncs, AckSaveErrors: s.ackErrs, WriteErrors: s.writeErrs, Full: s.full, OldestUnacked: s.oldestLocked(time.Now()).String(),
	}
}

// Close stops intake, writes and fsyncs what was appended, and releases
// files. Unacknowledged segments stay on disk for the next Open.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.done
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if s.cfg.Dir != "" {
		close(s.stop)
	}
	<-s.done
	s.r.close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holdf != nil {
		s.holdf.Close()
		s.holdf = nil
	}
	if len(s.pend) > 0 {
		return fmt.Errorf("spool %s: %d records could not be written", s.cfg.Dir, s.pendN)
	}
	return nil
}
