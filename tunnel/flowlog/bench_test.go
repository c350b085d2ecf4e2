//go:build linux

package flowlog

import (
	"context"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/ti-mo/conntrack"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRecordPipeline: flow records per CPU-second from a decoded
// conntrack destroy event to the logship spool: flowRecord (filter,
// endpoint, rule), the queue, the writer's rate limiter and JSON, and
// logship's Ship into a real spool (file sink in a temporary directory,
// group-commit fsync). The netlink receive and ti-mo's decode are not in
// it. Reports records/cpu-s (process CPU time, all goroutines, including
// logship's batcher and file sink) and allocations per record.
//
//	go test -run '^$' -bench BenchmarkRecordPipeline -benchtime 200000x ./tunnel/flowlog/
func BenchmarkRecordPipeline(b *testing.B) {
	dir := b.TempDir()
	lcfg := logship.DefaultConfig()
	lcfg.Sink = logship.SinkFile
	lcfg.File.Path = filepath.Join(dir, "records.jsonl")
	lcfg.Spool.Dir = filepath.Join(dir, "spool")
	lcfg.DeadLetterPath = filepath.Join(dir, "deadletter.jsonl")
	lcfg.InstanceID = "i-bench"
	sh, err := logship.New(context.Background(), lcfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sh.Close(context.Background())
	cfg := DefaultConfig()
	cfg.MaxRecordsPerSecond = 1 << 30 // measure the pipeline, not the limiter
	cfg.MarkBase, cfg.MarkMask = 0x47570000, 0xffff0000
	l, err := newLogger(cfg, fakeSource{}, sh, "i-bench", nil, nil, -1)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.writer(ctx)
	now := time.Now()
	f := conntrack.Flow{Mark: 0x47570201} // slot 1, rule id 1
	f.TupleOrig.IP.SourceAddress = netip.MustParseAddr("198.19.0.10")
	f.TupleOrig.IP.DestinationAddress = netip.MustParseAddr("203.0.113.30")
	f.TupleOrig.Proto.Protocol = 17
	f.TupleOrig.Proto.DestinationPort = 7
	f.TupleReply = f.TupleOrig
	f.TupleReply.IP.SourceAddress, f.TupleReply.IP.DestinationAddress = f.TupleOrig.IP.DestinationAddress, netip.MustParseAddr("198.18.3.1")
	f.CountersOrig.Packets, f.CountersOrig.Bytes = 1, 128
	f.CountersReply.Packets, f.CountersReply.Bytes = 1, 128
	f.Timestamp.Start, f.Timestamp.Stop = now, now.Add(time.Second)
	b.ReportAllocs()
	c0 := cpuTime()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		f.TupleOrig.Proto.SourcePort = uint16(i)
		r, ok := l.flowRecord(&f, TypeFlow, time.Time{})
		if !ok {
			b.Fatal("not ours")
		}
		l.queue <- r // blocking here: measure throughput, not summaries
	}
	for len(l.queue) > 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	l.wg.Wait()
	b.StopTimer()
	cpu := cpuTime() - c0
	if n := l.c.records.Load(); cpu > 0 {
		b.ReportMetric(float64(n)/cpu.Seconds(), "records/cpu-s")
	}
}
