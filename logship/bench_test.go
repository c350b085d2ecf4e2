package logship

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
	"github.com/gwlbproxy/gwlbproxy/proxy"
)

const fakeChildEnv = "LOGSHIP_FAKE_CHILD"

// TestFakeChild serves a CountOnly fake in its own process for the
// benchmark, so the benchmark process's CPU time is the shipper's alone.
func TestFakeChild(t *testing.T) {
	if os.Getenv(fakeChildEnv) == "" {
		t.Skip("child process of BenchmarkPipeline only")
	}
	f := cwlfake.New(cwlfake.Options{CountOnly: true})
	url, err := f.Start("127.0.0.1:0")
	if err != nil {
		fmt.Println("CHILD-ERROR", err)
		os.Exit(2)
	}
	fmt.Println("URL", url)
	io.Copy(io.Discard, os.Stdin) // until the parent goes away
	os.Exit(0)
}

func startFakeChild(b *testing.B) string {
	cmd := exec.Command(os.Args[0], "-test.run=^TestFakeChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), fakeChildEnv+"=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(sc.Text(), "URL "); ok {
			go io.Copy(io.Discard, stdout)
			return u
		}
	}
	b.Fatal("fake child gave no URL")
	return ""
}

// benchRecord is a ~530-byte record as the proxy encodes it (~400 bytes
// before the bind* and ja4/ja3 fields were added; a real TLS record also
// carries the 68 bytes of its two fingerprints).
func benchRecord() proxy.Record {
	return proxy.Record{
		// A spliced TLS connection: no HTTP fields, like most records of
		// an egress appliance.
		RecordID: "0123456789abcdef", InstanceID: "i-0123456789abcdef0",
		EndpointID: "vpce-0a1b2c3d4e5f60718", ClientIP: "10.20.30.40", ClientPort: 51234,
		DstIP: "203.0.113.77", DstPort: 443, SNI: "api.example.com",
		Action: "splice", Rule: "splice-api", BytesIn: 834, BytesOut: 6623, DurationMS: 17.125,
		TLSVersion: "TLS1.3",
	}
}

func TestBenchRecordSize(t *testing.T) {
	r := benchRecord()
	r.Time = time.Now()
	if n := len(r.AppendJSON(nil, 1024)); n < 360 || n > 650 {
		t.Fatalf("benchmark record is %d bytes, want ~530: %s", n, r.AppendJSON(nil, 1024))
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPipeline measures records/s end to end: encode (proxy.Record
// AppendJSON), Ship, spool with group-commit fsync (or the memory queue),
// batch, PutLogEvents through the real SDK to the fake over loopback,
// acknowledge. The fake runs in a child process; records/cpu-s is records
// per second of this process's CPU time (user+sys), i.e. per core.
func BenchmarkPipeline(b *testing.B) {
	for _, spoolOn := range []bool{true, false} {
		b.Run(fmt.Sprintf("spool=%v", spoolOn), func(b *testing.B) {
			url := startFakeChild(b)
			cfg := DefaultConfig()
			cfg.Sink = SinkCloudWatch
			cfg.CloudWatch = CloudWatchConfig{LogGroup: "/bench", LogStream: "i-bench",
				AWS: cwlfake.AWSConfig(url, "eu-west-1"), CreateGroup: true, PutTimeout: 30 * time.Second}
			dir := b.TempDir()
			cfg.Spool.Enabled = spoolOn
			cfg.Spool.Dir = filepath.Join(dir, "spool")
			cfg.Spool.MaxBytes = 8 << 30
			cfg.DeadLetterPath = filepath.Join(dir, "dl.jsonl")
			cfg.FlushInterval = 50 * time.Millisecond
			s, err := New(context.Background(), cfg, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			rec := benchRecord()
			buf := make([]byte, 0, 1024)
			rec.Time = time.Now()
			b.SetBytes(int64(len(rec.AppendJSON(nil, 1024))))
			b.ReportAllocs()
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			cpu0, t0 := cpuTime(), time.Now()
			b.ResetTimer()
			shipAcked(b, s, &rec, buf)
			b.StopTimer()
			wall, cpu := time.Since(t0), cpuTime()-cpu0
			runtime.ReadMemStats(&ms1)
			// Unrounded, whole process (SDK, HTTP, batcher included).
			b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(b.N), "mallocs/record")
			b.ReportMetric(float64(b.N)/wall.Seconds(), "records/s")
			b.ReportMetric(float64(b.N)/cpu.Seconds(), "records/cpu-s")
			if err := s.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkEncodeShip is the encode + spool path alone (the proxy's side
// of Ship): proxy.Record encoding, truncation check, spool append with
// group-commit fsync, while the pipeline drains to io.Discard. allocs/op
// is the per-record allocation count of that path (and of batching).
func BenchmarkEncodeShip(b *testing.B) {
	for _, spoolOn := range []bool{true, false} {
		b.Run(fmt.Sprintf("spool=%v", spoolOn), func(b *testing.B) {
			dir := b.TempDir()
			cfg := DefaultConfig()
			cfg.Stdout = io.Discard
			cfg.Spool.Enabled = spoolOn
			cfg.Spool.Dir = filepath.Join(dir, "spool")
			cfg.Spool.MaxBytes = 8 << 30
			cfg.DeadLetterPath = filepath.Join(dir, "dl.jsonl")
			cfg.FlushInterval = 20 * time.Millisecond
			s, err := New(context.Background(), cfg, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			rec := benchRecord()
			buf := make([]byte, 0, 1024)
			b.ReportAllocs()
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			t0 := time.Now()
			b.ResetTimer()
			shipAcked(b, s, &rec, buf)
			b.StopTimer()
			runtime.ReadMemStats(&ms1)
			b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(b.N), "mallocs/record")
			b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "records/s")
			s.Close(context.Background())
		})
	}
}

// shipAcked encodes and ships rec b.N times (waiting while the spool is
// full) and returns once the shipper has acknowledged all of them.
func shipAcked(b *testing.B, s *Shipper, rec *proxy.Record, buf []byte) {
	for i := 0; i < b.N; i++ {
		rec.Time = time.Now()
		buf = rec.AppendJSON(buf[:0], 1024)
		for {
			err := s.ShipRequest(rec.Time, buf, rec.Metrics())
			if err == nil {
				break
			}
			if !errors.Is(err, ErrSpoolFull) {
				b.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for s.Stats().Acked < uint64(b.N) {
		time.Sleep(time.Millisecond)
	}
}
