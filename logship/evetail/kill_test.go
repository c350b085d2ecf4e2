package evetail_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
	"github.com/gwlbproxy/gwlbproxy/logship/evetail"
)

// TestKillChild is the tailer process of TestSIGKILL: the real shipper
// (spool, CloudWatch Logs sink pointed at the parent's fake) and the tailer, until SIGTERM (orderly) or SIGKILL.
func TestKillChild(t *testing.T) {
	dir := os.Getenv("EVETAIL_KILL_DIR")
	if dir == "" {
		t.Skip("helper process of TestSIGKILL")
	}
	lc := logship.DefaultConfig()
	lc.Sink = logship.SinkCloudWatch
	lc.CloudWatch.LogGroup = "/gwlbproxy/test"
	lc.CloudWatch.LogStream = "i-kill"
	lc.CloudWatch.Region = "eu-west-1"
	lc.CloudWatch.Endpoint = os.Getenv("EVETAIL_KILL_CWL")
	lc.CloudWatch.CreateGroup = true
	lc.Retry = logship.RetryConfig{MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	lc.Spool.Dir = filepath.Join(dir, "spool")
	lc.DeadLetterPath = filepath.Join(dir, "dead.jsonl")
	lc.FlushInterval = 10 * time.Millisecond
	lc.InstanceID = "i-kill"
	sh, err := logship.New(context.Background(), lc, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	tl, err := evetail.New(evetail.Config{Path: filepath.Join(dir, "eve.json"), StateFile: filepath.Join(dir, "eve.pos"), Poll: 2 * time.Millisecond}, sh, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := tl.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sh.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestSIGKILL: the tailer and its shipper run as a separate process that is
// killed with SIGKILL at random moments (restarted each time) while
// Suricata-shaped alerts are appended and the file is rotated. No alert is
// lost. A kill between the spool's sync and the position write can repeat
// the last batch; repeats carry the same record_id (dedup record_id), and
// after an orderly stop (SIGTERM) nothing is repeated.
func TestSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	dir := t.TempDir()
	eve := filepath.Join(dir, "eve.json")
	os.WriteFile(eve, nil, 0o644)
	fake := cwlfake.New(cwlfake.Options{})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	records := func() []string {
		var out []string
		for _, ev := range fake.Events("/gwlbproxy/test", "i-kill") {
			out = append(out, ev.Message)
		}
		return out
	}
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$")
		cmd.Env = append(os.Environ(), "EVETAIL_KILL_DIR="+dir, "EVETAIL_KILL_CWL="+srv.URL)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	rng := rand.New(rand.NewPCG(3, 4))
	const total = 2000
	n, rot := 0, 0
	cmd := start()
	t.Cleanup(func() { // a failing test leaves no child behind
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	// The first start finds no saved position and begins at the current
	// file (history before the first start is not read): wait for it.
	for _, err := os.Stat(filepath.Join(dir, "eve.pos")); err != nil; _, err = os.Stat(filepath.Join(dir, "eve.pos")) {
		time.Sleep(5 * time.Millisecond)
	}
	for kills := 0; n < total; kills++ {
		for k := rng.IntN(100) + 1; k > 0 && n < total; k-- {
			f, _ := os.OpenFile(eve, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			f.WriteString(strings.Replace(alertLine7, `"flow_id":1007`, fmt.Sprintf(`"flow_id":%d`, n), 1))
			f.Close()
			n++
			if n%400 == 0 {
				rot++
				time.Sleep(2 * time.Millisecond)
				os.Rename(eve, fmt.Sprintf("%s.%d", eve, rot))
				os.WriteFile(eve, nil, 0o644)
			}
		}
		time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		cmd = start()
	}
	// Let the last process catch up, then stop it in order.
	deadline := time.Now().Add(60 * time.Second)
	for distinctFlows(t, records()) < total && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("orderly stop: %v", err)
	}
	flows, ids, lines := readRecords(t, records())
	if len(flows) != total {
		var missing []int
		for i := 0; i < total; i++ {
			if flows[fmt.Sprint(i)] == 0 {
				missing = append(missing, i)
			}
		}
		t.Fatalf("%d of %d alerts delivered; missing %d..%d (%d)", len(flows), total, missing[0], missing[len(missing)-1], len(missing))
	}
	for id, fl := range ids {
		if len(fl) != 1 {
			t.Fatalf("record_id %s carries flows %v", id, fl)
		}
	}
	// Repeats come mostly from the shipper itself: after a SIGKILL its
	// spool re-sends what the sink had not acknowledged (at least once).
	t.Logf("%d alerts, %d records delivered (%d repeats, each with its alert's record_id), %d rotations", total, lines, lines-total, rot)
}

func readRecords(t *testing.T, msgs []string) (flows map[string]int, ids map[string]map[string]bool, lines int) {
	flows, ids = map[string]int{}, map[string]map[string]bool{}
	for _, m := range msgs {
		var r map[string]any
		if err := json.Unmarshal([]byte(m), &r); err != nil {
			t.Fatalf("bad record %q", m)
		}
		if r["record_type"] != "ids_alert" {
			continue
		}
		lines++
		fl, id := r["flow_id"].(string), r["record_id"].(string)
		flows[fl]++
		if ids[id] == nil {
			ids[id] = map[string]bool{}
		}
		ids[id][fl] = true
	}
	return
}

func distinctFlows(t *testing.T, msgs []string) int {
	f, _, _ := readRecords(t, msgs)
	return len(f)
}
