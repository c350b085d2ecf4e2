package spool

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
)

// The acknowledged state is persisted so that a restart after a crash
// replays only what was not acknowledged, instead of every record of the
// oldest remaining segment (with the CloudWatch sink, 24 of 30 records were
// sent twice after kill -9). It is the acknowledged-below position plus the
// ranges acknowledged out of order above it: the senders deliver batches
// in parallel, so one batch stuck in retries must not make every later,
// already delivered batch go out again.
//
// The writer goroutine writes it on every acknowledgement it sees
// (acknowledgements that arrive while it is busy are coalesced into one
// positional write of at most 512 bytes, which survives kill -9, a watchdog
// abort or an OOM kill as soon as it returns) and fsyncs it group-committed
// like the frames, at most once per sync interval, so a power loss forgets
// at most one interval of acknowledgements. An older state is always safe:
// it only means more records are sent again. The file holds two 512-byte slots (separate sectors),
// written alternately, each
//
//	0  uint64 acknowledged-below sequence
//	8  uint32 generation (which slot is newer)
//	12 uint32 number of ranges n (at most maxAckRanges)
//	16 n × (uint64 from, uint64 to) ranges acknowledged out of order
//	.. uint32 CRC32C of everything before it
//
// so a write torn by power loss damages at most the slot being written and
// the other still holds the previous state. Nothing saved ever runs ahead
// of fsynced frames (see saveAck), so a replay never skips a record that
// was not stored; ranges that do not fit are left out, which only means
// more records are sent again.
const (
	ackFileName  = "acked.pos"
	ackSlotSize  = 512
	maxAckRanges = (ackSlotSize - 16 - 4) / 16
)

// ackRange is an acknowledged range [from, to) above the position.
type ackRange struct{ from, to uint64 }

type ackState struct {
	pos    uint64
	ranges []ackRange // sorted, disjoint, all above pos
}

func (a ackState) equal(b ackState) bool {
	if a.pos != b.pos || len(a.ranges) != len(b.ranges) {
		return false
	}
	for i := range a.ranges {
		if a.ranges[i] != b.ranges[i] {
			return false
		}
	}
	return true
}

type ackFile struct {
	f   *os.File
	gen uint32
	buf [ackSlotSize]byte
}

// openAckFile opens (or creates) dir's file and returns the newest valid
// state, ok false when there is none.
func openAckFile(dir string) (*ackFile, ackState, bool, error) {
	f, err := os.OpenFile(filepath.Join(dir, ackFileName), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, ackState{}, false, err
	}
	a := &ackFile{f: f}
	var st ackState
	var found bool
	for slot := range 2 {
		var b [ackSlotSize]byte
		if n, _ := f.ReadAt(b[:], int64(slot*ackSlotSize)); n < 20 {
			continue // new or short file: the slot was never written
		}
		n := int(binary.LittleEndian.Uint32(b[12:]))
		if n > maxAckRanges {
			continue
		}
		end := 16 + 16*n
		if crc32.Checksum(b[:end], castagnoli) != binary.LittleEndian.Uint32(b[end:]) {
			continue
		}
		gen := binary.LittleEndian.Uint32(b[8:])
		if found && int32(gen-a.gen) <= 0 {
			continue
		}
		s := ackState{pos: binary.LittleEndian.Uint64(b[:8])}
		for i := range n {
			o := 16 + 16*i
			r := ackRange{binary.LittleEndian.Uint64(b[o:]), binary.LittleEndian.Uint64(b[o+8:])}
			if r.from > s.pos && r.to > r.from {
				s.ranges = append(s.ranges, r)
			}
		}
		sort.Slice(s.ranges, func(i, j int) bool { return s.ranges[i].from < s.ranges[j].from })
		st, a.gen, found = s, gen, true
	}
	return a, st, found, nil
}

// save writes st into the older slot (into the page cache: it survives a
// crash of the process; sync makes it survive power loss).
func (a *ackFile) save(st ackState) error {
	gen := a.gen + 1
	b := a.buf[:]
	n := min(len(st.ranges), maxAckRanges)
	binary.LittleEndian.PutUint64(b[0:], st.pos)
	binary.LittleEndian.PutUint32(b[8:], gen)
	binary.LittleEndian.PutUint32(b[12:], uint32(n))
	for i, r := range st.ranges[:n] {
		o := 16 + 16*i
		binary.LittleEndian.PutUint64(b[o:], r.from)
		binary.LittleEndian.PutUint64(b[o+8:], r.to)
	}
	end := 16 + 16*n
	binary.LittleEndian.PutUint32(b[end:], crc32.Checksum(b[:end], castagnoli))
	if _, err := a.f.WriteAt(b[:end+4], int64(gen%2)*ackSlotSize); err != nil {
		return err
	}
	a.gen = gen
	return nil
}

// sync makes the slots written so far durable.
func (a *ackFile) sync() error { return a.f.Sync() }

func (a *ackFile) close() error { return a.f.Close() }
