package logship

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
)

const (
	childEnvURL   = "LOGSHIP_KILL_CHILD_URL"
	childEnvSpool = "LOGSHIP_KILL_CHILD_SPOOL"
)

// TestKillChild is the child half of TestKill9: it ships numbered records
// as fast as it can, and after each block forces a spool sync and prints
// how many records are durable. It runs only when re-executed by TestKill9.
func TestKillChild(t *testing.T) {
	url := os.Getenv(childEnvURL)
	if url == "" {
		t.Skip("child process of TestKill9 only")
	}
	cfg := killConfig(url, os.Getenv(childEnvSpool))
	s, err := New(context.Background(), cfg, nil, nil)
	if err != nil {
		fmt.Println("CHILD-ERROR", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		now := time.Now()
		if err := s.Ship(now, sampleRecord(i, now)); err != nil {
			fmt.Println("CHILD-ERROR", err)
			os.Exit(2)
		}
		if i%250 == 249 {
			if err := s.Sync(); err != nil {
				fmt.Println("CHILD-ERROR", err)
				os.Exit(2)
			}
			fmt.Fprintf(out, "SYNCED %d\n", i+1)
			out.Flush()
			time.Sleep(time.Millisecond)
		}
	}
}

func killConfig(url, spoolDir string) Config {
	cfg := DefaultConfig()
	cfg.Sink = SinkCloudWatch
	cfg.CloudWatch.LogGroup = "/gwlbproxy/kill"
	cfg.CloudWatch.LogStream = "i-kill"
	cfg.CloudWatch.AWS = cwlfake.AWSConfig(url, "eu-west-1")
	cfg.CloudWatch.CreateGroup = true
	cfg.CloudWatch.PutTimeout = 5 * time.Second
	cfg.Spool.Dir = spoolDir
	cfg.Spool.SegmentBytes = 256 << 10 // many segments: deletion races the kill
	cfg.DeadLetterPath = filepath.Join(spoolDir, "..", "deadletter.jsonl")
	cfg.FlushInterval = 10 * time.Millisecond
	cfg.Retry = RetryConfig{MinBackoff: 2 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	return cfg
}

// TestKill9 kills a shipping process with SIGKILL mid-stream and restarts
// from the same spool: every record the child had synced must arrive.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	noLeak(t)
	fake := cwlfake.New(cwlfake.Options{})
	url, err := fake.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	// A slow, flaky service keeps a backlog in the spool at kill time.
	fake.SetSlow(15 * time.Millisecond)
	fake.SetThrottle(10)
	fake.InjectFault(cwlfake.AcceptThenReset, 5)
	dir := t.TempDir()
	spoolDir := filepath.Join(dir, "spool")

	cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnvURL+"="+url, childEnvSpool+"="+spoolDir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	synced := 0
	sc := bufio.NewScanner(stdout)
	deadline := time.Now().Add(2 * time.Minute)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "CHILD-ERROR") {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal(line)
		}
		if n, ok := strings.CutPrefix(line, "SYNCED "); ok {
			synced, _ = strconv.Atoi(n)
		}
		delivered := fake.Count("/gwlbproxy/kill", "i-kill")
		if (synced >= 30_000 && delivered > 2000) || time.Now().After(deadline) {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	atKill := fake.Count("/gwlbproxy/kill", "i-kill")
	// Duplicates already stored before the kill come from the injected
	// AcceptThenReset faults (a batch stored, the reply lost, re-sent);
	// the restart's own duplicates are counted apart from them.
	killIDs := make(map[string]int)
	for _, ev := range fake.Events("/gwlbproxy/kill", "i-kill") {
		killIDs[recordID(ev.Message)]++
	}
	if synced == 0 {
		t.Fatal("child synced nothing")
	}
	if atKill >= synced {
		t.Logf("warning: everything was delivered before the kill (%d >= %d)", atKill, synced)
	}
	fake.ClearFaults()

	// Restart from the same spool and drain.
	s, err := New(context.Background(), killConfig(url, spoolDir), testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	replay := s.Stats()
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	ids := make(map[string]int)
	for _, ev := range fake.Events("/gwlbproxy/kill", "i-kill") {
		ids[recordID(ev.Message)]++
	}
	checkMissing(t, ids, 0, synced)
	dups, restartDups := 0, 0
	for id, c := range ids {
		dups += c - 1
		if k := killIDs[id]; k > 0 {
			restartDups += c - k // stored again after the restart
		}
	}
	// The spool persists its acknowledged position and out-of-order
	// acknowledged ranges per batch (group-committed), so only batches in
	// flight at the kill, or acknowledged in the last commit window, may
	// be sent again: at most one batch per sender, plus one commit window.
	inFlight := (killConfig(url, spoolDir).Senders + 1) * fake.LargestPut()
	t.Logf("child synced %d records, %d delivered before SIGKILL, restart replayed %d (torn frames %d), %d unique stored, "+
		"%d duplicates (%d stored again after the restart; bound: %d = (senders+1) x largest batch %d)",
		synced, atKill, replay.Spool.Replayed, replay.Spool.TornFrames, len(ids), dups, restartDups, inFlight, fake.LargestPut())
	if restartDups > inFlight {
		t.Errorf("%d records stored again after the restart, more than the batches in flight (%d)", restartDups, inFlight)
	}
}
