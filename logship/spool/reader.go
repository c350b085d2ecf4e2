package spool

import (
	"fmt"
	"os"
)

// readChunk is how much of a segment file the reader pulls per read call;
// large reads keep syscalls off the per-record path.
const readChunk = 1 << 20

// reader is the single read cursor. Only the goroutine calling Read
// touches it (Close releases it after the writer stopped).
type reader struct {
	seg    *segment
	f      *os.File
	off    int64 // offset of the next unconsumed frame in seg
	buf    []byte
	bufOff int64 // file offset of buf[0]
}

func (r *reader) close() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}

func (r *reader) switchTo(seg *segment) {
	r.close()
	r.seg = seg
	r.off = 0
	if seg.path != "" {
		r.off = int64(len(segMagic))
	}
	r.buf = r.buf[:0]
}

// frame returns bytes starting at the cursor that hold at least one
// complete frame (or fewer if the segment is damaged).
func (r *reader) frame(mem []byte, limit int64) ([]byte, error) {
	if r.seg.path == "" {
		return mem[r.off:limit], nil
	}
	rel := r.off - r.bufOff
	need := int64(frameHeader)
	if rel >= 0 && rel+frameHeader <= int64(len(r.buf)) {
		n, err := frameLen(r.buf[rel:])
		if err != nil {
			return nil, err
		}
		if rel+int64(n) <= int64(len(r.buf)) {
			return r.buf[rel : rel+int64(n)], nil
		}
		need = int64(n)
	}
	if r.f == nil {
		f, err := os.Open(r.seg.path)
		if err != nil {
			return nil, err
		}
		r.f = f
	}
	want := min(limit-r.off, max(need, readChunk))
	if int64(cap(r.buf)) < want {
		r.buf = make([]byte, want)
	}
	r.buf = r.buf[:want]
	n, err := r.f.ReadAt(r.buf, r.off)
	if int64(n) < want {
		return nil, fmt.Errorf("short read (%d of %d bytes): %v", n, want, err)
	}
	r.bufOff = r.off
	return r.buf, nil
}

// after returns the segment following seg, or nil. Called with mu held.
func (s *Spool) after(seg *segment) *segment {
	for i, x := range s.segs {
		if x == seg && i+1 < len(s.segs) {
			return s.segs[i+1]
		}
	}
	for _, x := range s.segs {
		if x.first >= seg.next && x != seg {
			return x
		}
	}
	return nil
}

// Read passes records after the read cursor to fn, oldest first, until fn
// returns false (that record is not consumed and comes again next time) or
// nothing more is readable. rec is valid only during the call. Read never
// blocks; wait on Ready between calls. It must be called from one goroutine.
func (s *Spool) Read(fn func(seq uint64, ts int64, rec []byte) bool) (int, error) {
	n := 0
	for {
		s.mu.Lock()
		if s.r.seg == nil {
			if len(s.segs) == 0 {
				s.mu.Unlock()
				return n, nil
			}
			s.r.switchTo(s.segs[0])
		}
		seg := s.r.seg
		limit, sealed := seg.size, seg.sealed
		// Records below the acknowledged position (saved before a restart)
		// were delivered: skip them.
		floor := s.acked
		var skip []ackRange
		if len(s.skip) > 0 {
			skip = append(skip, s.skip...)
		}
		var mem []byte
		if seg.path == "" {
			mem = seg.mem[:limit]
		}
		var next *segment
		if sealed && s.r.off >= limit {
			next = s.after(seg)
		}
		s.mu.Unlock()
		if s.r.off >= limit {
			if next == nil {
				return n, nil
			}
			s.r.switchTo(next)
			continue
		}
		for s.r.off < limit {
			b, err := s.r.frame(mem, limit)
			var (
				seq     uint64
				ts      int64
				payload []byte
				size    int
			)
			if err == nil {
				seq, ts, payload, size, err = decodeFrame(b)
			}
			if err != nil {
				err = fmt.Errorf("spool: segment %x offset %d: %w", seg.first, s.r.off, err)
				if !sealed {
					return n, err
				}
				// A sealed segment damaged after it was written: skip
				// the rest of it rather than stall the queue forever.
				s.mu.Lock()
				s.torn++
				s.tornBytes += limit - s.r.off
				s.mu.Unlock()
				s.log.Error("spool: skipping damaged remainder of segment", "err", err)
				s.r.off = limit
				break
			}
			if seq < floor || skipped(skip, seq) {
				s.r.off += int64(size)
				continue
			}
			if !fn(seq, ts, payload) {
				return n, nil
			}
			s.r.off += int64(size)
			n++
		}
	}
}

// skipped reports whether seq lies in one of the (few) ranges acknowledged
// out of order before a restart.
func skipped(skip []ackRange, seq uint64) bool {
	for _, r := range skip {
		if seq >= r.from && seq < r.to {
			return true
		}
	}
	return false
}
