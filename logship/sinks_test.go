package logship

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestStdoutSinkWithoutSpool(t *testing.T) {
	noLeak(t)
	var out syncBuffer
	cfg := DefaultConfig()
	cfg.Stdout = &out
	cfg.Spool.Enabled = false
	cfg.DeadLetterPath = filepath.Join(t.TempDir(), "dl.jsonl")
	cfg.FlushInterval = 5 * time.Millisecond
	s, err := New(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 300 {
		if err := s.Ship(now.Add(time.Duration(i)*time.Millisecond), sampleRecord(i, now)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 300 {
		t.Fatalf("%d lines", len(lines))
	}
	for i, l := range lines {
		if recordID(l) != fmt.Sprintf("rec-%08d", i) {
			t.Fatalf("line %d is %s", i, recordID(l))
		}
	}
}

func TestFileSinkRotates(t *testing.T) {
	noLeak(t)
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Sink = SinkFile
	cfg.File = FileConfig{Path: filepath.Join(dir, "out", "records.jsonl"), RotateBytes: 64 << 10, Keep: 3}
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfg.DeadLetterPath = filepath.Join(dir, "dl.jsonl")
	cfg.FlushInterval = 2 * time.Millisecond
	s, err := New(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000 // ~900 KB: more than keep+1 files hold, oldest discarded
	for i := range n {
		now := time.Now()
		if err := s.Ship(now, sampleRecord(i, now)); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			time.Sleep(3 * time.Millisecond) // let batches stay small
		}
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, suffix := range []string{".3", ".2", ".1", ""} {
		lines := readLines(t, cfg.File.Path+suffix)
		all = append(all, lines...)
	}
	files, _ := filepath.Glob(cfg.File.Path + "*")
	if len(files) != 4 {
		t.Fatalf("files %v, want the live file plus keep=3", files)
	}
	// The newest records are all there, contiguous, ending with the last.
	if recordID(all[len(all)-1]) != fmt.Sprintf("rec-%08d", n-1) {
		t.Fatalf("last line %s", all[len(all)-1])
	}
	first := n - len(all)
	for i, l := range all {
		if recordID(l) != fmt.Sprintf("rec-%08d", first+i) {
			t.Fatalf("line %d is %s, want rec %d", i, recordID(l), first+i)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	cases := []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.Sink = "kafka" }, "sink:"},
		{func(c *Config) { c.Spool.FullPolicy = "block" }, "spool.full_policy:"},
		{func(c *Config) { c.Spool.FsyncInterval = time.Second }, "spool.fsync_interval:"},
		{func(c *Config) { c.Spool.Dir = "" }, "spool.dir:"},
		{func(c *Config) { c.Senders = 0 }, "senders:"},
		{func(c *Config) { c.MaxEventBytes = 2 << 20 }, "max_event_bytes:"},
		{func(c *Config) { c.Sink = SinkCloudWatch; c.CloudWatch.LogGroup = "" }, "cloudwatch.log_group:"},
		{func(c *Config) { c.Sink = SinkCloudWatch; c.CloudWatch.LogStream = "a:b" }, "cloudwatch.log_stream:"},
		{func(c *Config) { c.Sink = SinkFile; c.File.Keep = 0 }, "file.keep:"},
		{func(c *Config) { c.Retry.MaxBackoff = time.Millisecond }, "retry.min_backoff:"},
		{func(c *Config) { c.FlushInterval = 0 }, "flush_interval:"},
		{func(c *Config) { c.EMF.Enabled = true; c.EMF.Namespace = "" }, "emf.namespace:"},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("got %v, want prefix %q", err, tc.want)
		}
	}
}

// TestStreamFromInstanceID names the stream after the instance id the
// application hands in (from the AWS environment's IMDS client, see
// cmd/internal/awsenv's TestLogshipStreamFromIMDS) when log_stream is
// empty, and takes the region from the injected SDK configuration when
// cloudwatch.region is empty.
func TestStreamFromInstanceID(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.CloudWatch.LogStream = ""
	e.cfg.CloudWatch.Region = ""
	e.cfg.InstanceID = "i-0feedfacecafe0001"
	s := e.start(t)
	if got := s.sink.(*cwSink).client.Options().Region; got != "eu-west-1" {
		t.Errorf("client region %q, want the injected eu-west-1", got)
	}
	now := time.Now()
	s.Ship(now, sampleRecord(1, now))
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := e.fake.Streams(e.cfg.CloudWatch.LogGroup); len(st) != 1 || st[0] != "i-0feedfacecafe0001" {
		t.Fatalf("streams %v", st)
	}
}

// TestNoAWSConfig: the cloudwatch sink loads no SDK configuration of its
// own; without one given it refuses to start, saying why.
func TestNoAWSConfig(t *testing.T) {
	e := newEnv(t)
	e.cfg.CloudWatch.AWS = aws.Config{}
	if _, err := New(context.Background(), e.cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "no AWS configuration") {
		t.Fatalf("got %v", err)
	}
	e.cfg.CloudWatch.AWS = cwlfake.AWSConfig(e.srv.URL, "")
	if _, err := New(context.Background(), e.cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "cloudwatch.region") {
		t.Fatalf("got %v", err)
	}
}

// TestRawBodyMatchesSDK ships awkward messages through both encodings of
// PutLogEvents (ours and the SDK's) and requires identical stored events.
func TestRawBodyMatchesSDK(t *testing.T) {
	msgs := []string{
		`{"record_id":"a","path":"/q?x=\"y\"&z=\\w"}`,
		"{\"ctl\":\"\x01\x1f\t\r\n\x7f\"}",
		`{"u":"héllo wörld ✓ 𝄞 \u2028 \u2029 <>&"}`,
		"{\"bad\":\"\xff\xfe\xc3\x28 end\"}",
		strings.Repeat(`"\`, 3000),
	}
	var stored [2][]string
	for i, sdk := range []bool{false, true} {
		e := newEnv(t)
		e.cfg.Senders = 1
		s := e.start(t)
		s.sink.(*cwSink).sdkSerializer = sdk
		now := time.Now()
		for j, m := range msgs {
			if err := s.Ship(now.Add(time.Duration(j)*time.Millisecond), []byte(m)); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, ev := range e.fake.Events(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream) {
			stored[i] = append(stored[i], ev.Message)
		}
	}
	if len(stored[0]) != len(msgs) {
		t.Fatalf("raw path stored %d of %d", len(stored[0]), len(msgs))
	}
	for j := range msgs {
		if stored[0][j] != stored[1][j] {
			t.Errorf("message %d: raw %q, sdk %q", j, stored[0][j], stored[1][j])
		}
		if j != 3 && stored[0][j] != msgs[j] {
			t.Errorf("message %d changed: %q", j, stored[0][j])
		}
	}
}

// TestDemoWithStandaloneFake is the `demo --cloudwatch-fake` wiring: the
// fake started standalone, static credentials instead of the default chain.
func TestDemoWithStandaloneFake(t *testing.T) {
	noLeak(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	fake := cwlfake.New(cwlfake.Options{})
	url, err := fake.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Sink = SinkCloudWatch
	cfg.CloudWatch.AWS = aws.Config{Region: "us-east-1", BaseEndpoint: aws.String(url),
		Credentials: credentials.NewStaticCredentialsProvider("DEMO", "demo", "")}
	cfg.CloudWatch.LogStream = "demo"
	cfg.CloudWatch.CreateGroup = true
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfg.DeadLetterPath = filepath.Join(dir, "dl.jsonl")
	s, err := New(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s.Ship(now, sampleRecord(7, now))
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if evs := fake.Events(cfg.CloudWatch.LogGroup, "demo"); len(evs) != 1 || recordID(evs[0].Message) != "rec-00000007" {
		t.Fatalf("events %+v", evs)
	}
}

func TestMetricsRegistered(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	s, err := New(context.Background(), e.cfg, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 3 {
		s.Ship(now, sampleRecord(i, now))
	}
	waitFor(t, "delivery", func() bool { return s.Stats().Acked == 3 })
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		switch {
		case m.Counter != nil:
			got[mf.GetName()] = m.Counter.GetValue()
		case m.Gauge != nil:
			got[mf.GetName()] = m.Gauge.GetValue()
		case m.Histogram != nil:
			got[mf.GetName()] = float64(m.Histogram.GetSampleCount())
		}
	}
	for name, want := range map[string]float64{
		"gwlbproxy_logship_records_in_total": 3, "gwlbproxy_logship_records_acked_total": 3,
		"gwlbproxy_logship_records_dropped_total": 0, "gwlbproxy_logship_records_dead_lettered_total": 0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	for _, name := range []string{"gwlbproxy_logship_put_duration_seconds", "gwlbproxy_logship_batch_records",
		"gwlbproxy_logship_spool_bytes", "gwlbproxy_logship_oldest_unacked_seconds", "gwlbproxy_logship_put_retries_total"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s not registered", name)
		}
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}
