package evetail

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	os.Setenv("AWS_ACCESS_KEY_ID", "AKIDEVETAILTEST")
	os.Setenv("AWS_SECRET_ACCESS_KEY", "evetail-test-secret")
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Setenv("AWS_CONFIG_FILE", os.DevNull)
	os.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	os.Unsetenv("AWS_PROFILE")
	os.Exit(m.Run())
}

// alertLine is an eve.json alert as Suricata 7 writes it (shape taken from
// the e2e test's real output), numbered by flow_id.
func alertLine(i int) string {
	return fmt.Sprintf(`{"timestamp":"2026-12-07T20:25:25.%06d+0000","flow_id":%d,"in_iface":"gwlbmirror0","event_type":"alert","src_ip":"203.0.113.10","src_port":443,"dest_ip":"198.18.0.5","dest_port":%d,"proto":"TCP","direction":"to_client","alert":{"action":"allowed","gid":1,"signature_id":1900001,"rev":1,"signature":"marker in body","category":"","severity":3},"http":{"hostname":"good.test","url":"/x"},"app_proto":"http","flow":{"pkts_toserver":5,"pkts_toclient":4,"bytes_toserver":340,"bytes_toclient":518,"start":"2026-12-07T20:25:25.427045+0000","src_ip":"198.18.0.5","dest_ip":"203.0.113.10","src_port":%d,"dest_port":443}}`+"\n", i%1000000, 1000+i, 10000+i, 10000+i)
}

// memShipper keeps shipped records; Sync is a no-op (the spool's own
// durability is tested in logship).
type memShipper struct {
	mu   sync.Mutex
	recs []map[string]any
}

func (m *memShipper) Ship(_ time.Time, b []byte) error {
	var r map[string]any
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	m.mu.Lock()
	m.recs = append(m.recs, r)
	m.mu.Unlock()
	return nil
}
func (m *memShipper) Sync() error { return nil }

func (m *memShipper) count() map[int]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := map[int]int{}
	for _, r := range m.recs {
		c[int(r["client_port"].(float64))-10000]++
	}
	return c
}

func appendTo(t *testing.T, path, s string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(s)
	f.Close()
}

// TestRestartsAndRotation: alerts (mixed with other event types, junk,
// and lines left half-written between rounds) are appended in rounds; the
// file is rotated by rename every 500 alerts (at most once per stop here;
// TestTwoRotationsWhileStopped covers more);
// after each round the tailer runs for a random short
// time (often stopped mid-file) and is started again. Every alert is
// shipped exactly once.
func TestRestartsAndRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "eve.json")
	cfg := Config{Path: path, StateFile: filepath.Join(dir, "eve.pos"), Poll: time.Millisecond, InstanceID: "i-test"}
	ship := &memShipper{}
	log := slog.New(slog.DiscardHandler)
	const total = 3000
	rng := rand.New(rand.NewPCG(1, 2))
	rot, i, pending := 0, 0, ""
	run := func(d time.Duration) {
		tl, err := New(cfg, ship, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		if err := tl.Run(ctx); err != nil {
			t.Fatal(err)
		}
	}
	appendTo(t, path, "")
	run(time.Millisecond) // the first start: no state, starts at the current file
	rounds := 0
	for i < total {
		rounds++
		appendTo(t, path, pending)
		pending = ""
		for k := rng.IntN(60) + 1; k > 0 && i < total; k-- {
			switch i % 7 {
			case 0:
				appendTo(t, path, `{"timestamp":"2026-12-07T20:25:25.000000+0000","event_type":"http","src_ip":"1.2.3.4"}`+"\n")
			case 3:
				appendTo(t, path, "not json\n")
			}
			appendTo(t, path, alertLine(i))
			i++
			if i%500 == 0 {
				rot++
				time.Sleep(2 * time.Millisecond) // distinct modification times
				os.Rename(path, fmt.Sprintf("%s.%d", path, rot))
			}
		}
		if i < total && rng.IntN(3) == 0 { // leave a line half-written
			l := alertLine(i)
			appendTo(t, path, l[:30])
			pending = l[30:]
			i++
		}
		if rng.IntN(4) > 0 { // sometimes two rounds with no tailer
			run(time.Duration(rng.IntN(3000)) * time.Microsecond)
		}
	}
	appendTo(t, path, pending)
	deadline := time.Now().Add(60 * time.Second)
	for len(ship.count()) < total && time.Now().Before(deadline) {
		run(50 * time.Millisecond)
	}
	c := ship.count()
	var missing, dup []int
	for i := 0; i < total; i++ {
		switch {
		case c[i] == 0:
			missing = append(missing, i)
		case c[i] > 1:
			dup = append(dup, i)
		}
	}
	if len(missing) > 0 || len(dup) > 0 || len(c) != total {
		t.Fatalf("%d alerts shipped after %d rounds: missing %v duplicated %v", len(c), rounds, missing[:min(10, len(missing))], dup[:min(10, len(dup))])
	}
	t.Logf("%d rounds, %d rotations", rounds, rot)
}

// TestTruncateInPlace: copytruncate-style rotation restarts at offset 0.
func TestTruncateInPlace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "eve.json")
	ship := &memShipper{}
	tl, _ := New(Config{Path: path, StateFile: filepath.Join(dir, "pos"), Poll: time.Millisecond}, ship, slog.New(slog.DiscardHandler))
	appendTo(t, path, alertLine(0)+alertLine(1))
	if err := tl.step(context.Background()); err != nil {
		t.Fatal(err)
	}
	os.Truncate(path, 0)
	appendTo(t, path, alertLine(2))
	if err := tl.step(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c := ship.count(); len(c) != 3 || c[0] != 1 || c[1] != 1 || c[2] != 1 {
		t.Fatalf("%v", c)
	}
}

// TestHostileLines: a huge line, binary junk, JSON that is not an object,
// an alert with absurd field types: skipped or shipped, never a crash, and
// the alerts around them arrive.
func TestHostileLines(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "eve.json")
	ship := &memShipper{}
	tl, _ := New(Config{Path: path, StateFile: filepath.Join(dir, "pos"), Poll: time.Millisecond}, ship, slog.New(slog.DiscardHandler))
	big := make([]byte, maxLine+1000)
	for i := range big {
		big[i] = 'a'
	}
	appendTo(t, path, alertLine(0))
	appendTo(t, path, string(big)+"\n")
	appendTo(t, path, "\x00\xff\xfe{\n[1,2]\nnull\n\"alert\"\n")
	appendTo(t, path, `{"event_type":"alert","timestamp":5,"alert":"x","flow":7}`+"\n")
	appendTo(t, path, `{"event_type":"alert","timestamp":"bad","src_port":-1,"alert":{"signature_id":"x"}}`+"\n")
	appendTo(t, path, alertLine(1))
	if err := tl.step(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c := ship.count(); c[0] != 1 || c[1] != 1 {
		t.Fatalf("alerts around hostile lines: %v", c)
	}
	if tl.Bad < 5 {
		t.Errorf("bad lines counted %d", tl.Bad)
	}
}

// TestIPv6Canonical: Suricata's expanded IPv6 addresses become the
// canonical form the proxy's records use, so alerts join requests.
func TestIPv6Canonical(t *testing.T) {
	line := `{"timestamp":"2026-12-07T20:25:25.000001+0000","flow_id":1,"event_type":"alert","src_ip":"2001:0db8:0001:0000:0000:0000:0000:0005","src_port":443,"dest_ip":"2001:0db8:0000:0000:0000:0000:0000:0010","dest_port":40600,"proto":"TCP","direction":"to_client","alert":{"signature_id":1},"flow":{"src_ip":"2001:0db8:0000:0000:0000:0000:0000:0010","dest_ip":"2001:0db8:0001:0000:0000:0000:0000:0005","src_port":40600,"dest_port":443}}`
	b, err := AlertRecord([]byte(line), "i-1")
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	json.Unmarshal(b, &r)
	if r["client_ip"] != "2001:db8::10" || r["dst_ip"] != "2001:db8:1::5" || r["client_port"] != float64(40600) || r["dst_port"] != float64(443) {
		t.Fatalf("%v", r)
	}
}

// TestTwoRotationsWhileStopped: the tailer stops in file A; A is rotated
// to eve.json.1, B written and rotated to eve.json.2, C written. On restart
// it finishes A, reads B (the file modified next) and then C.
func TestTwoRotationsWhileStopped(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "eve.json")
	cfg := Config{Path: path, StateFile: filepath.Join(dir, "pos"), Poll: time.Millisecond}
	ship := &memShipper{}
	log := slog.New(slog.DiscardHandler)
	appendTo(t, path, alertLine(0)+alertLine(1))
	tl, _ := New(cfg, ship, log)
	if err := tl.resume(); err != nil {
		t.Fatal(err)
	}
	if err := tl.step(context.Background()); err != nil {
		t.Fatal(err)
	}
	tl.f.Close()
	base := time.Now().Add(-time.Hour)
	appendTo(t, path, alertLine(2))
	os.Chtimes(path, base, base)
	os.Rename(path, path+".1")
	appendTo(t, path, alertLine(3)+alertLine(4))
	os.Chtimes(path, base.Add(time.Minute), base.Add(time.Minute))
	os.Rename(path, path+".2")
	appendTo(t, path, alertLine(5))
	tl, _ = New(cfg, ship, log)
	if err := tl.resume(); err != nil {
		t.Fatal(err)
	}
	if err := tl.step(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c := ship.count(); len(c) != 6 || c[0] != 1 || c[2] != 1 || c[3] != 1 || c[5] != 1 {
		t.Fatalf("shipped %v, want 0..5 once each", c)
	}
}

// FuzzAlertRecord: any eve line gives a valid JSON record or an error,
// never a panic.
func FuzzAlertRecord(f *testing.F) {
	f.Add([]byte(alertLine(1)))
	f.Add([]byte(`{"event_type":"alert","timestamp":"2026-12-07T20:25:25.000001+0000","src_ip":"2001:0db8:0000:0000:0000:0000:0000:0010"}`))
	f.Add([]byte(`{"event_type":"http"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		b, err := AlertRecord(line, "i-1")
		if err == nil && !json.Valid(b) {
			t.Fatalf("invalid record %q", b)
		}
	})
}

// spoolShipper is a memShipper with the spool view: its records are the
// spool, numbered from 0.
type spoolShipper struct {
	memShipper
	raw   [][]byte
	holds []uint64
}

func (s *spoolShipper) Ship(ts time.Time, b []byte) error {
	s.mu.Lock()
	s.raw = append(s.raw, append([]byte(nil), b...))
	s.mu.Unlock()
	return s.memShipper.Ship(ts, b)
}
func (s *spoolShipper) SpoolNextSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(len(s.raw))
}
func (s *spoolShipper) SpoolHold(seq uint64) error {
	s.mu.Lock()
	s.holds = append(s.holds, seq)
	s.mu.Unlock()
	return nil
}
func (s *spoolShipper) SpoolScanFrom(seq uint64, fn func([]byte) bool) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.raw[min(int(seq), len(s.raw)):] {
		if !fn(r) {
			break
		}
	}
	return true, nil
}

// TestCrashAfterSyncBeforeSave: a crash after the spool got a batch but
// before the position was written (simulated by putting the older state
// file back) does not ship the batch again; alerts after it are shipped;
// an alert at an offset the spool holds but with other content (the file
// was rewritten) is shipped, not skipped.
func TestCrashAfterSyncBeforeSave(t *testing.T) {
	dir := t.TempDir()
	path, state := filepath.Join(dir, "eve.json"), filepath.Join(dir, "eve.pos")
	os.WriteFile(path, nil, 0o644)
	sh := &spoolShipper{}
	cfg := Config{Path: path, StateFile: state, Poll: 10 * time.Millisecond}
	runUntil := func(want int) *Tailer {
		t.Helper()
		tl, err := New(cfg, sh, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- tl.Run(ctx) }()
		deadline := time.Now().Add(10 * time.Second)
		for sh.SpoolNextSeq() < uint64(want) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond) // more would arrive now
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return tl
	}
	appendLines := func(from, to int) {
		f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o644)
		for i := from; i < to; i++ {
			f.WriteString(alertLine(i))
		}
		f.Close()
	}
	appendLines(0, 3)
	runUntil(3)
	before, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	appendLines(3, 6)
	runUntil(6)
	os.WriteFile(state, before, 0o600) // the crash: position of the run before
	appendLines(6, 8)
	tl := runUntil(8)
	if n := sh.SpoolNextSeq(); n != 8 {
		t.Fatalf("%d records in the spool for 8 alerts: %v", n, sh.count())
	}
	if tl.Respooled != 3 || tl.Shipped != 2 {
		t.Errorf("after the crash: %d alerts recognised in the spool, %d shipped; want 3 and 2", tl.Respooled, tl.Shipped)
	}
	if len(sh.holds) == 0 {
		t.Error("the tailer never asked the spool to hold its frames")
	}

	// Same offsets, other alerts: the spool's records do not match, so
	// they are shipped.
	before, _ = os.ReadFile(state)
	appendLines(8, 9)
	runUntil(9)
	os.WriteFile(state, before, 0o600)
	raw, _ := os.ReadFile(path)
	os.WriteFile(path, raw[:len(raw)-len(alertLine(8))], 0o644) // in place: same inode
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o644)
	f.WriteString(strings.Replace(alertLine(8), `"signature_id":1900001`, `"signature_id":1900002`, 1))
	f.Close()
	tl = runUntil(10)
	if n := sh.SpoolNextSeq(); n != 10 || tl.Respooled != 0 {
		t.Errorf("a different alert at a spooled offset: %d records in the spool (want 10), %d skipped (want 0)", n, tl.Respooled)
	}
}
