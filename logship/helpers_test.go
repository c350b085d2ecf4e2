package logship

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"

	"github.com/gwlbproxy/gwlbproxy/proxy/schema"
)

// TestMain points the AWS default credential chain at static test keys
// (environment provider) and keeps it off any real instance metadata.
func TestMain(m *testing.M) {
	os.Setenv("AWS_ACCESS_KEY_ID", "AKIDLOGSHIPTEST")
	os.Setenv("AWS_SECRET_ACCESS_KEY", "logship-test-secret")
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Setenv("AWS_CONFIG_FILE", os.DevNull)
	os.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	os.Unsetenv("AWS_PROFILE")
	os.Exit(m.Run())
}

// sampleMetrics are sampleRecord(i)'s metric fields, as the proxy hands
// them to ShipRequest.
func sampleMetrics(i int) schema.Metrics {
	actions := []string{"allow", "deny", "splice", "error"}
	return schema.Metrics{Action: actions[i%len(actions)], Status: 200, DurationMS: 12.5}
}

// sampleRecord builds a proxy record with every field of the contract.
func sampleRecord(i int, ts time.Time) []byte {
	m := sampleMetrics(i)
	r := map[string]any{
		"time":           ts.UTC().Format(time.RFC3339Nano),
		"record_id":      fmt.Sprintf("rec-%08d", i),
		"instance_id":    "i-0123456789abcdef0",
		"endpoint_id":    "vpce-0a1b2c3d4e5f60718",
		"client_ip":      "10.1.2.3",
		"client_port":    40000 + i%20000,
		"dst_ip":         "203.0.113.10",
		"dst_port":       443,
		"sni":            "www.example.com",
		"host":           "www.example.com",
		"method":         "GET",
		"scheme":         "https",
		"path":           "/index.html",
		"status":         m.Status,
		"action":         m.Action,
		"rule":           "allow-example",
		"bytes_in":       512,
		"bytes_out":      4096,
		"duration_ms":    m.DurationMS,
		"tls_version":    "TLS1.3",
		"alpn":           "h2",
		"upstream_error": "",
		"user_agent":     "curl/8.5.0",
	}
	b, _ := json.Marshal(r)
	return b
}

func recordID(msg string) string {
	return string(jsonField([]byte(msg), "record_id"))
}

// jsonField returns the raw value of a top-level "key": in a flat record
// (a string without quotes, or a number), by scanning, without decoding.
// Tests only: logship itself never reads a record's fields.
func jsonField(rec []byte, key string) []byte {
	i := bytes.Index(rec, []byte(`"`+key+`":`))
	if i < 0 {
		return nil
	}
	v := bytes.TrimLeft(rec[i+len(key)+3:], " ")
	if len(v) > 0 && v[0] == '"' {
		if j := bytes.IndexByte(v[1:], '"'); j >= 0 {
			return v[1 : 1+j]
		}
		return nil
	}
	j := bytes.IndexAny(v, ",}")
	if j < 0 {
		return nil
	}
	return bytes.TrimSpace(v[:j])
}

type env struct {
	fake *cwlfake.Server
	srv  *httptest.Server
	cfg  Config
	dir  string
}

// newEnv starts a fake CloudWatch Logs and a config pointing at it with
// short timers so tests exercise many retries quickly.
func newEnv(t *testing.T) *env {
	t.Helper()
	fake := cwlfake.New(cwlfake.Options{})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Sink = SinkCloudWatch
	cfg.CloudWatch.LogGroup = "/gwlbproxy/test"
	cfg.CloudWatch.LogStream = "i-test"
	cfg.CloudWatch.AWS = cwlfake.AWSConfig(srv.URL, "eu-west-1")
	cfg.CloudWatch.CreateGroup = true
	cfg.CloudWatch.RetentionDays = 30
	cfg.CloudWatch.PutTimeout = 5 * time.Second
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfg.Spool.MaxBytes = 64 << 20
	cfg.DeadLetterPath = filepath.Join(dir, "deadletter.jsonl")
	cfg.FlushInterval = 20 * time.Millisecond
	cfg.Retry = RetryConfig{MinBackoff: 2 * time.Millisecond, MaxBackoff: 40 * time.Millisecond}
	cfg.DrainDeadline = 60 * time.Second
	return &env{fake: fake, srv: srv, cfg: cfg, dir: dir}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func (e *env) start(t *testing.T) *Shipper {
	t.Helper()
	s, err := New(context.Background(), e.cfg, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// stored returns how often each record_id was stored.
func (e *env) stored() map[string]int {
	ids := make(map[string]int)
	for _, ev := range e.fake.Events(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream) {
		ids[recordID(ev.Message)]++
	}
	return ids
}

// waitFor polls cond for up to a minute (the race detector on a loaded
// 2-core box is slow; the condition, not the timing, is the assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkMissing fails if any of ids [from, to) was not stored.
func checkMissing(t *testing.T, ids map[string]int, from, to int) {
	t.Helper()
	var missing []string
	for i := from; i < to; i++ {
		if ids[fmt.Sprintf("rec-%08d", i)] == 0 {
			missing = append(missing, fmt.Sprintf("rec-%08d", i))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d records missing, e.g. %v", len(missing), to-from, missing[:min(5, len(missing))])
	}
}

// noLeak registers a check that the goroutine count returns to its level
// before the test (polling: connection goroutines wind down
// asynchronously). Call it first so its cleanup runs last.
func noLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(30 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Fatalf("goroutine leak: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:n])
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil
	}
	return strings.Split(string(data), "\n")
}
