package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

func rec(i int) []byte { return fmt.Appendf(nil, `{"record_id":"r%06d","pad":"%0100d"}`, i, i) }

// drain reads everything readable, acknowledging as it goes if ack is set.
func drain(t *testing.T, s *Spool, ack bool) []string {
	t.Helper()
	var out []string
	first := s.FirstUnacked()
	var last uint64
	_, err := s.Read(func(seq uint64, ts int64, r []byte) bool {
		out = append(out, string(r))
		last = seq
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if ack && len(out) > 0 {
		s.Ack(first, last+1)
	}
	return out
}

func TestAppendReadAckFile(t *testing.T) {
	for _, dir := range []string{t.TempDir(), ""} {
		t.Run(fmt.Sprintf("disk=%v", dir != ""), func(t *testing.T) {
			s, err := Open(Config{Dir: dir, SegmentBytes: 4096, MaxBytes: 1 << 20}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			const n = 500
			for i := range n {
				if _, err := s.Append(int64(i), rec(i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			var got []string
			deadline := time.Now().Add(10 * time.Second)
			for len(got) < n && time.Now().Before(deadline) {
				got = append(got, drain(t, s, true)...)
				if len(got) < n {
					select {
					case <-s.Ready():
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
			if len(got) != n {
				t.Fatalf("read %d records, want %d", len(got), n)
			}
			for i, g := range got {
				if g != string(rec(i)) {
					t.Fatalf("record %d = %q", i, g)
				}
			}
			if u := s.Unacked(); u != 0 {
				t.Fatalf("unacked = %d", u)
			}
			// Everything acknowledged: only the active segment remains.
			if dir != "" {
				// The writer may still be rotating; poll.
				for time.Now().Before(deadline) {
					s.Sync()
					if st := s.Stats(); st.Segments <= 2 {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				files, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
				if len(files) > 2 {
					t.Fatalf("%d segment files left after full ack", len(files))
				}
			}
		})
	}
}

func TestReplayAndTornTail(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, SegmentBytes: 8192}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := range n {
		if _, err := s.Append(int64(i), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	// Acknowledge the first 100 (out of order, in two ranges).
	got := drain(t, s, false)
	if len(got) != n {
		t.Fatalf("read %d", len(got))
	}
	s.Ack(50, 100)
	s.Ack(0, 50)
	if s.FirstUnacked() != 100 {
		t.Fatalf("first unacked %d", s.FirstUnacked())
	}
	s.Close()

	// Tear the last frame of the newest non-empty segment.
	files, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	sort.Strings(files)
	var last string
	for _, f := range files {
		if st, _ := os.Stat(f); st.Size() > int64(len(segMagic)) {
			last = f
		}
	}
	st, _ := os.Stat(last)
	if err := os.Truncate(last, st.Size()-7); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(Config{Dir: dir, SegmentBytes: 8192}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	stats := s2.Stats()
	if stats.TornFrames != 1 {
		t.Fatalf("torn frames = %d, want 1", stats.TornFrames)
	}
	got = drain(t, s2, true)
	// Segments wholly acknowledged were deleted; partly acknowledged ones
	// replay in full (at-least-once), so expect a suffix ending at n-2.
	if len(got) == 0 {
		t.Fatal("nothing replayed")
	}
	if got[len(got)-1] != string(rec(n-2)) {
		t.Fatalf("last replayed %q, want record %d", got[len(got)-1], n-2)
	}
	firstIdx := n - 1 - len(got)
	if firstIdx > 100 {
		t.Fatalf("replay starts at %d, after the first unacked record 100", firstIdx)
	}
	for i, g := range got {
		if g != string(rec(firstIdx+i)) {
			t.Fatalf("replayed[%d] = %q", i, g)
		}
	}
	// New appends continue the sequence after the replayed records.
	seq, err := s2.Append(1, rec(9999))
	if err != nil {
		t.Fatal(err)
	}
	if seq != uint64(n-1) {
		t.Fatalf("next seq %d, want %d", seq, n-1)
	}
}

func TestCorruptMiddleFrame(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(Config{Dir: dir, SegmentBytes: 1 << 20}, nil)
	for i := range 10 {
		s.Append(int64(i), rec(i))
	}
	s.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	sort.Strings(files)
	data, _ := os.ReadFile(files[0])
	flen := frameHeader + len(rec(0))
	data[len(segMagic)+3*flen+frameHeader+5] ^= 0xff // payload of record 3
	os.WriteFile(files[0], data, 0o640)
	s2, err := Open(Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := drain(t, s2, false); len(got) != 3 {
		t.Fatalf("replayed %d records, want the 3 before the corrupt frame", len(got))
	}
}

func TestFull(t *testing.T) {
	for _, dir := range []string{t.TempDir(), ""} {
		s, err := Open(Config{Dir: dir, MaxBytes: 10_000, SegmentBytes: 2000}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		for {
			if _, err := s.Append(1, rec(n)); err != nil {
				if !errors.Is(err, ErrFull) {
					t.Fatal(err)
				}
				break
			}
			n++
		}
		if !s.Full() || n == 0 || n > 100 {
			t.Fatalf("full=%v after %d", s.Full(), n)
		}
		// Acknowledging frees whole segments, so appends succeed again.
		s.Sync()
		for time.Sleep(0); ; {
			got := drain(t, s, true)
			if len(got) == 0 {
				break
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := s.Append(1, rec(n)); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("still full after ack: %v %+v", err, s.Stats())
			}
			s.Sync()
			time.Sleep(5 * time.Millisecond)
		}
		s.Close()
	}
}

func BenchmarkAppend(b *testing.B) {
	s, err := Open(Config{Dir: b.TempDir(), MaxBytes: 1 << 40}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	r := make([]byte, 400)
	go func() { // consumer keeps the spool from filling
		for range s.Ready() {
			first := s.FirstUnacked()
			var last uint64
			n, _ := s.Read(func(seq uint64, _ int64, _ []byte) bool { last = seq; return true })
			if n > 0 {
				s.Ack(first, last+1)
			}
		}
	}()
	b.ReportAllocs()
	b.SetBytes(int64(len(r)))
	for i := 0; b.Loop(); i++ {
		for {
			_, err := s.Append(int64(i), r)
			if err == nil {
				break
			}
			if !errors.Is(err, ErrFull) {
				b.Fatal(err)
			}
			time.Sleep(time.Millisecond) // backpressure: the disk is behind
		}
	}
}

// FuzzReplay feeds arbitrary segment contents to Open: replay must never
// panic or fail, only keep the valid prefix and count the rest as torn.
func FuzzReplay(f *testing.F) {
	good := appendFrame(append([]byte(nil), segMagic[:]...), 0, 1, []byte(`{"a":1}`))
	good = appendFrame(good, 1, 2, []byte(`{"b":2}`))
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add([]byte("LGSPOOL1\xff\xff\xff\xff"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segName(0)), data, 0o640); err != nil {
			t.Fatal(err)
		}
		s, err := Open(Config{Dir: dir}, nil)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		defer s.Close()
		n := 0
		if _, err := s.Read(func(seq uint64, _ int64, _ []byte) bool {
			if seq != uint64(n) {
				t.Fatalf("seq %d at position %d", seq, n)
			}
			n++
			return true
		}); err != nil {
			t.Fatalf("read: %v", err)
		}
		if uint64(n) != s.Stats().Replayed {
			t.Fatalf("read %d, replayed %d", n, s.Stats().Replayed)
		}
	})
}
