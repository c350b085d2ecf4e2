package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// scanAll returns the payloads ScanFrom(seq) sees and whether it was
// complete.
func scanAll(t *testing.T, s *Spool, seq uint64) ([]string, bool) {
	t.Helper()
	var out []string
	complete, err := s.ScanFrom(seq, func(p []byte) bool { out = append(out, string(p)); return true })
	if err != nil {
		t.Fatal(err)
	}
	return out, complete
}

// TestHoldAcrossCrash: frames at or above a held sequence stay on disk after
// they were delivered and acknowledged, and after a crash (the directory as
// kill -9 leaves it) ScanFrom returns exactly them; without the hold the
// acknowledged segments are deleted and the scan says it is incomplete.
func TestHoldAcrossCrash(t *testing.T) {
	for _, held := range []bool{true, false} {
		t.Run(fmt.Sprintf("held=%v", held), func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(Config{Dir: dir, SegmentBytes: 4096}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for i := range 60 { // more than two 4 KiB segments
				s.Append(int64(i), rec(i))
			}
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			from := s.NextSeq()
			if from != 60 {
				t.Fatalf("NextSeq %d, want 60", from)
			}
			if held {
				if err := s.Hold(from); err != nil {
					t.Fatal(err)
				}
			}
			for i := 60; i < 100; i++ {
				s.Append(int64(i), rec(i))
			}
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			if got := drain(t, s, true); len(got) != 100 { // all delivered and acknowledged
				t.Fatalf("read %d records", len(got))
			}
			waitSaved(t, s, 100)
			img := crashImage(t, dir)

			s2, err := Open(Config{Dir: img, SegmentBytes: 4096}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if n := s2.NextSeq(); n != 100 {
				t.Fatalf("after the crash NextSeq %d, want 100", n)
			}
			got, complete := scanAll(t, s2, from)
			if !held {
				if complete {
					t.Fatalf("acknowledged segments without a hold were kept (%d frames from %d)", len(got), from)
				}
				return
			}
			if !complete || len(got) != 40 || got[0] != string(rec(60)) || got[39] != string(rec(99)) {
				t.Fatalf("ScanFrom(%d) after the crash: complete %v, %d frames", from, complete, len(got))
			}
			if _, complete := scanAll(t, s2, 0); complete {
				t.Error("ScanFrom(0) complete, but frames below the hold were deleted")
			}
			// Moving the hold up frees what it no longer covers.
			before := s2.Stats().Segments
			if err := s2.Hold(s2.NextSeq()); err != nil {
				t.Fatal(err)
			}
			if after := s2.Stats().Segments; after >= before {
				t.Errorf("segments %d -> %d after the hold moved past them", before, after)
			}
		})
	}
}

// TestHoldExpires: a hold nobody renews (the producer was disabled or
// stopped) does not keep acknowledged segments for ever.
func TestHoldExpires(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, SegmentBytes: 4096}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Hold(0); err != nil {
		t.Fatal(err)
	}
	for i := range 150 {
		s.Append(int64(i), rec(i))
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	drain(t, s, true)
	held := s.Stats().Segments
	if held < 2 {
		t.Fatalf("%d segments held, want the acknowledged ones kept", held)
	}
	s.mu.Lock()
	s.holdUntil = time.Now().Add(-time.Second)
	s.reap()
	s.mu.Unlock()
	if n := s.Stats().Segments; n != 1 {
		t.Errorf("%d segments after the hold expired, want only the active one", n)
	}
}

// TestHoldFileCorrupt: a damaged hold file means no hold (at most a repeat
// for the producer), never a failed Open.
func TestHoldFileCorrupt(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, holdFileName), []byte("garbage-garbage"), 0o640); err != nil {
		t.Fatal(err)
	}
	s, err := Open(Config{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.hold != noHold {
		t.Errorf("hold %d from a corrupt file", s.hold)
	}
	if _, err := (&Spool{}).ScanFrom(0, func([]byte) bool { return true }); err == nil {
		t.Error("ScanFrom on a memory spool: no error")
	}
}

// TestHoldNeverFillsSpool: above half the cap a hold is ignored, so
// delivered records kept for a producer never make Append refuse.
func TestHoldNeverFillsSpool(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir(), MaxBytes: 64 << 10, SegmentBytes: 4096}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Hold(0); err != nil {
		t.Fatal(err)
	}
	for i := range 2000 { // ~300 KiB through a 64 KiB spool, delivered as it goes
		if _, err := s.Append(int64(i), rec(i)); err != nil {
			t.Fatalf("record %d: %v (bytes %d)", i, err, s.Bytes())
		}
		if i%50 == 49 {
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			drain(t, s, true)
		}
	}
	if b := s.Bytes(); b > 48<<10 {
		t.Errorf("%d bytes kept for the hold, want at most about half of 64 KiB", b)
	}
}
