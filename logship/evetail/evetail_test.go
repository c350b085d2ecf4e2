package evetail

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
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

// TestRestartsAndRotation: while alerts (mixed with other event types, junk
// and lines written in two pieces) are appended and the file is rotated by
// rename several times, the tailer is stopped and started again at random
// moments; every alert is shipped exactly once.
func TestRestartsAndRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "eve.json")
	cfg := Config{Path: path, StateFile: filepath.Join(dir, "eve.pos"), Poll: 2 * time.Millisecond, InstanceID: "i-test"}
	ship := &memShipper{}
	const total = 3000
	done := make(chan struct{})
	go func() {
		defer close(done)
		rot := 0
		for i := 0; i < total; i++ {
			line := alertLine(i)
			switch i % 7 {
			case 0:
				appendTo(t, path, `{"timestamp":"2026-12-07T20:25:25.000000+0000","event_type":"http","src_ip":"1.2.3.4"}`+"\n")
			case 3:
				appendTo(t, path, "not json\n")
			case 5: // a line written in two pieces
				appendTo(t, path, line[:40])
				time.Sleep(time.Millisecond)
				line = line[40:]
			}
			appendTo(t, path, line)
			if i%500 == 499 { // rotate: rename, new file
				rot++
				os.Rename(path, fmt.Sprintf("%s.%d", path, rot))
			}
			if i%10 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	log := slog.New(slog.DiscardHandler)
	for restarts := 0; ; restarts++ {
		tl, err := New(cfg, ship, log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(20)+1)*time.Millisecond)
		if err := tl.Run(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		select {
		case <-done:
		default:
			continue
		}
		// Writer finished: one last run to the end.
		ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
		tl, _ = New(cfg, ship, log)
		if err := tl.Run(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		t.Logf("%d restarts", restarts)
		if restarts < 10 {
			t.Fatalf("only %d restarts: the test did not exercise restarts", restarts)
		}
		break
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
		t.Fatalf("%d alerts shipped: missing %v duplicated %v", len(c), missing[:min(10, len(missing))], dup[:min(10, len(dup))])
	}
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

// TestAlertReachesCloudWatch: an alert goes through the real shipper
// (spool, real AWS SDK) to the CloudWatch Logs fake as an ids_alert record
// with the connection's client and destination.
func TestAlertReachesCloudWatch(t *testing.T) {
	fake := cwlfake.New(cwlfake.Options{})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	dir := t.TempDir()
	lc := logship.DefaultConfig()
	lc.Sink = logship.SinkCloudWatch
	lc.CloudWatch.LogGroup = "/gwlbproxy/test"
	lc.CloudWatch.LogStream = "i-test"
	lc.CloudWatch.Region = "eu-west-1"
	lc.CloudWatch.Endpoint = srv.URL
	lc.CloudWatch.CreateGroup = true
	lc.Spool.Dir = filepath.Join(dir, "spool")
	lc.DeadLetterPath = filepath.Join(dir, "dead.jsonl")
	lc.FlushInterval = 20 * time.Millisecond
	sh, err := logship.New(context.Background(), lc, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close(context.Background())
	path := filepath.Join(dir, "eve.json")
	appendTo(t, path, alertLine(7))
	tl, _ := New(Config{Path: path, StateFile: filepath.Join(dir, "pos"), Poll: 5 * time.Millisecond, InstanceID: "i-test"}, sh, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	go tl.Run(ctx)
	defer cancel()
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := fake.Events("/gwlbproxy/test", "i-test")
		if len(evs) > 0 {
			var r map[string]any
			if err := json.Unmarshal([]byte(evs[0].Message), &r); err != nil {
				t.Fatal(err)
			}
			if r["record_type"] != "ids_alert" || r["client_ip"] != "198.18.0.5" || r["client_port"] != float64(10007) ||
				r["dst_ip"] != "203.0.113.10" || r["dst_port"] != float64(443) || r["signature_id"] != float64(1900001) || r["instance_id"] != "i-test" {
				t.Fatalf("record %v", r)
			}
			if want := time.Date(2026, 12, 7, 20, 25, 25, 7000, time.UTC).UnixMilli(); evs[0].Timestamp != want {
				t.Errorf("event timestamp %d, want %d (the alert's)", evs[0].Timestamp, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no event at the fake")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
