package spool

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// crashImage copies the spool directory as it is on disk now: what a
// kill -9 (or power loss after the last fsync) leaves for the next start.
func crashImage(t *testing.T, dir string) string {
	t.Helper()
	img := t.TempDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		src, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		dst, err := os.Create(filepath.Join(img, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		src.Close()
		dst.Close()
	}
	return img
}

// waitSaved waits until the writer has persisted the acknowledged position
// pos (it does so on its own, without Sync or Close).
func waitSaved(t *testing.T, s *Spool, pos uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, st, ok, err := openAckFile(s.cfg.Dir)
		got := st.pos
		if err != nil {
			t.Fatal(err)
		}
		if ok && got == pos {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("acknowledged position on disk %d (found %v), want %d", got, ok, pos)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAckPositionSurvivesCrash: batches acknowledged before a crash are
// not replayed, even when they share segments with unacknowledged ones.
// Before the position was persisted, every record of the oldest remaining
// segment came again (24 of 30 in the field report).
func TestAckPositionSurvivesCrash(t *testing.T) {
	dir := t.TempDir()
	// One big segment: without the saved position all 1000 would replay.
	s, err := Open(Config{Dir: dir, SegmentBytes: 1 << 20, SyncInterval: 10 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n, batch, acked = 1000, 70, 700
	for i := range n {
		if _, err := s.Append(int64(i), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := drain(t, s, false); len(got) != n {
		t.Fatalf("read %d of %d", len(got), n)
	}
	// Ten batches acknowledged one by one, as the senders do.
	for from := uint64(0); from < acked; from += batch {
		s.Ack(from, from+batch)
	}
	waitSaved(t, s, acked)
	saves := s.Stats().AckSaves
	t.Logf("%d acknowledgements persisted with %d writes", acked/batch, saves)

	s2, err := Open(Config{Dir: crashImage(t, dir), SegmentBytes: 1 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.FirstUnacked() != acked {
		t.Fatalf("first unacknowledged after restart %d, want %d", s2.FirstUnacked(), acked)
	}
	got := drain(t, s2, false)
	if len(got) != n-acked {
		t.Fatalf("replayed %d records, want exactly the %d unacknowledged ones (duplicates: %d)", len(got), n-acked, len(got)-(n-acked))
	}
	for i, g := range got {
		if g != string(rec(acked+i)) {
			t.Fatalf("replayed[%d] = %.30q, want record %d", i, g, acked+i)
		}
	}
	if st := s2.Stats(); st.Replayed != n-acked {
		t.Errorf("stats replayed %d, want %d", st.Replayed, n-acked)
	}
	if seq, err := s2.Append(1, rec(n)); err != nil || seq != n {
		t.Fatalf("next append seq %d %v, want %d", seq, err, n)
	}
}

// TestAckPositionTornSlot: a damaged newest slot (a torn write) falls back
// to the previous position: more records replay, none is lost.
func TestAckPositionTornSlot(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, SyncInterval: 10 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if _, err := s.Append(int64(i), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	drain(t, s, false)
	s.Ack(0, 30)
	waitSaved(t, s, 30)
	s.Ack(30, 60)
	waitSaved(t, s, 60)
	img := crashImage(t, dir)
	s.Close()

	_, _, _, err = openAckFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// Find the slot holding 60 and flip a byte in it.
	f, err := os.OpenFile(filepath.Join(img, ackFileName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for slot := range 2 {
		var b [ackSlotSize]byte
		f.ReadAt(b[:], int64(slot*ackSlotSize))
		if b[0] == 60 {
			b[3] ^= 0xff
			f.WriteAt(b[:], int64(slot*ackSlotSize))
		}
	}
	f.Close()
	s2, err := Open(Config{Dir: img}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := s2.FirstUnacked(); got != 30 {
		t.Fatalf("first unacknowledged %d after a torn newest slot, want the previous position 30", got)
	}
	if got := drain(t, s2, false); len(got) != 70 || got[0] != string(rec(30)) {
		t.Fatalf("replayed %d records starting %.30q, want 70 from record 30", len(got), got[0])
	}
}

// TestAckPositionNoReuse: after every segment was acknowledged and deleted,
// a restart continues numbering above the saved position, so a later
// replay can never skip new records as "acknowledged".
func TestAckPositionNoReuse(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SegmentBytes: 4096}
	s, err := Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if _, err := s.Append(int64(i), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Sync()
	for len(drain(t, s, true)) > 0 {
		s.Sync()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := drain(t, s2, false); len(got) != 0 {
		t.Fatalf("replayed %d acknowledged records", len(got))
	}
	seq, err := s2.Append(1, rec(1000))
	if err != nil || seq != 200 {
		t.Fatalf("seq %d %v, want 200", seq, err)
	}
	s2.Sync()
	if got := drain(t, s2, false); len(got) != 1 || got[0] != string(rec(1000)) {
		t.Fatalf("new record not readable after restart: %q", got)
	}
}

// BenchmarkAppendAck measures appends with per-batch acknowledgements
// persisted (group-committed with the frames).
//
//	go test -run '^$' -bench AppendAck -benchmem ./logship/spool/
func BenchmarkAppendAck(b *testing.B) {
	s, err := Open(Config{Dir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	payload := rec(1)
	const batch = 500
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	var from uint64
	for i := 0; b.Loop(); i++ {
		if _, err := s.Append(int64(i), payload); err != nil {
			b.Fatal(err)
		}
		if i%batch == batch-1 {
			s.Read(func(seq uint64, ts int64, r []byte) bool { return true })
			to := s.Stats().NextSeq
			s.Ack(from, to)
			from = to
		}
	}
	b.ReportMetric(float64(s.Stats().AckSaves), "ack_saves")
}

// TestAckRangesSurviveCrash: with parallel senders one batch can be stuck
// in retries while later ones are delivered. After a crash only the stuck
// batch and the unacknowledged tail come again, not the delivered batches
// behind it.
func TestAckRangesSurviveCrash(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, SegmentBytes: 1 << 20, SyncInterval: 10 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n, batch = 1000, 100
	for i := range n {
		if _, err := s.Append(int64(i), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	drain(t, s, false)
	// Batch [100, 200) is stuck; [0,100) and [200, 700) are delivered.
	for from := uint64(0); from < 700; from += batch {
		if from != 100 {
			s.Ack(from, from+batch)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, st, _, err := openAckFile(dir)
		if err != nil {
			t.Fatal(err)
		}
		if st.pos == 100 && len(st.ranges) == 1 && st.ranges[0] == (ackRange{200, 700}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("saved state %+v, want position 100 and range [200,700)", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	s2, err := Open(Config{Dir: crashImage(t, dir), SegmentBytes: 1 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	var seqs []uint64
	_, err = s2.Read(func(seq uint64, ts int64, r []byte) bool {
		if string(r) != string(rec(int(seq))) {
			t.Fatalf("seq %d holds %.30q", seq, r)
		}
		seqs = append(seqs, seq)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	want := 100 + (n - 700)
	if len(seqs) != want || seqs[0] != 100 || seqs[99] != 199 || seqs[100] != 700 {
		t.Fatalf("replayed %d records (want %d: [100,200) and [700,1000))", len(seqs), want)
	}
	if st := s2.Stats(); st.Replayed != uint64(want) {
		t.Errorf("stats replayed %d, want %d", st.Replayed, want)
	}
	if u := s2.Unacked(); u != uint64(want) {
		t.Errorf("unacked %d after the restart, want %d (restored ranges are acknowledged)", u, want)
	}
	// Acknowledging the replay as one batch tiling the gap (as the
	// batcher cuts it) reaches the end.
	s2.Ack(100, n)
	if s2.FirstUnacked() != n || s2.Unacked() != 0 {
		t.Fatalf("after acknowledging the replay: first unacked %d, unacked %d", s2.FirstUnacked(), s2.Unacked())
	}
}
