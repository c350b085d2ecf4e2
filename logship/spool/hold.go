package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"time"
)

// A producer that keeps its own read position outside the spool (the
// eve.json tailer, logship/evetail) cannot write that position and the
// records it covers atomically: after a crash between the spool's sync and
// the position write, it reads the same input again and would append the
// same records twice. It avoids that by looking, after a restart, at the
// frames appended since its saved position (ScanFrom) and skipping the
// input they already hold. For that those frames must still be on disk,
// including frames the sink already acknowledged: Hold keeps the segments
// holding frames at or above a sequence from being deleted.
//
// A hold lives holdTTL after it was set (or, for the persisted hold, after
// Open): a producer that stops holding (disabled, or gone) cannot keep
// acknowledged segments on disk for ever. Nor does a hold take the spool
// towards full: above half of MaxBytes it is ignored, so delivered records
// never make the spool refuse new ones. An expired, ignored or lost hold
// only means the producer may append a record twice; it never loses one.
//
// The hold file holds one 12-byte record, written in place (it survives
// kill -9 once the write returns; it is not fsynced: after a power loss
// an older hold keeps more, a missing one falls back to at-least-once):
//
//	0 uint64 held sequence
//	8 uint32 CRC32C of bytes [0, 8)
const (
	holdFileName = "hold.pos"
	holdTTL      = 10 * time.Minute
)

// noHold is the held sequence when nothing is held.
const noHold = math.MaxUint64

// readHold returns the persisted hold of dir, or noHold.
func readHold(dir string) uint64 {
	b, err := os.ReadFile(filepath.Join(dir, holdFileName))
	if err != nil || len(b) != 12 || crc32.Checksum(b[:8], castagnoli) != binary.LittleEndian.Uint32(b[8:]) {
		return noHold
	}
	return binary.LittleEndian.Uint64(b)
}

// Hold keeps every segment that holds frames at or above seq on disk for
// holdTTL (until a later Hold moves it), also across a restart, so that
// ScanFrom(seq) after the restart sees them. Use NextSeq for seq before
// appending what a later scan must find.
func (s *Spool) Hold(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.Dir == "" || s.closed {
		return nil
	}
	s.hold, s.holdUntil = seq, time.Now().Add(holdTTL)
	if s.holdf == nil {
		f, err := os.OpenFile(filepath.Join(s.cfg.Dir, holdFileName), os.O_CREATE|os.O_WRONLY, 0o640)
		if err != nil {
			return fmt.Errorf("spool: hold: %w", err)
		}
		s.holdf = f
	}
	var b [12]byte
	binary.LittleEndian.PutUint64(b[:], seq)
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b[:8], castagnoli))
	if _, err := s.holdf.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("spool: hold: %w", err)
	}
	s.reap() // a hold that moved up may free segments
	return nil
}

// heldBelow is the sequence below which reap may delete acknowledged
// segments. Called with mu held.
func (s *Spool) heldBelow() uint64 {
	if s.hold == noHold || s.bytes > s.cfg.MaxBytes/2 || time.Now().After(s.holdUntil) {
		return noHold
	}
	return s.hold
}

// NextSeq is the sequence the next appended record gets.
func (s *Spool) NextSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nextSeq
}

// errScanMemory: a spool in memory keeps nothing across restarts.
var errScanMemory = errors.New("spool: in memory: nothing to scan")

// ScanFrom calls fn with the payload of every frame at or above seq that
// was written to disk, in order, until fn returns false. complete is false
// when frames at or above seq were already deleted (acknowledged and
// reaped without a hold covering them): the scan then misses them. Frames
// appended but not yet written are not seen; call it before appending.
func (s *Spool) ScanFrom(seq uint64, fn func(payload []byte) bool) (complete bool, err error) {
	if s.cfg.Dir == "" {
		return false, errScanMemory
	}
	s.mu.Lock()
	complete = len(s.segs) == 0 || s.segs[0].first <= seq
	var paths []string
	for _, seg := range s.segs {
		if seg.next > seq && seg.path != "" {
			paths = append(paths, seg.path)
		}
	}
	s.mu.Unlock()
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			return false, nil // deleted since: acknowledged and reaped
		}
		if err != nil {
			return complete, fmt.Errorf("spool: scan: %w", err)
		}
		if len(data) < len(segMagic) {
			continue
		}
		for off := len(segMagic); off < len(data); {
			fseq, _, payload, n, err := decodeFrame(data[off:])
			if err != nil {
				break // the active segment's unwritten tail
			}
			off += n
			if fseq >= seq && !fn(payload) {
				return complete, nil
			}
		}
	}
	return complete, nil
}
