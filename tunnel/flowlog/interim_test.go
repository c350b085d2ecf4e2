//go:build linux

package flowlog

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
)

// TestInterimRecords: a flow alive longer than interim_interval gets
// flow_interim records with its counters so far, growing, and none for
// a flow that is younger.
func TestInterimRecords(t *testing.T) {
	h := floodNS(t)
	cfg := DefaultConfig()
	cfg.InterimInterval = time.Second
	cfg.MarkBase, cfg.MarkMask = 0x47570000, 0xffff0000
	rec := &memRecorder{}
	l, err := newLogger(cfg, fakeSource{}, rec, "i-interim", nil, nil, int(h))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var c *net.UDPConn
	if err := inns.Do(h, func() (err error) {
		c, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40001}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var seen []float64
	deadline := time.Now().Add(20 * time.Second)
	for len(seen) < 2 {
		c.Write([]byte("0123456789")) // 38 bytes on the wire
		time.Sleep(200 * time.Millisecond)
		seen = seen[:0]
		rec.mu.Lock()
		for _, r := range rec.recs {
			if r["record_type"] == TypeInterim && r["client_port"] == 40001.0 && r["dst_port"] == 9.0 {
				seen = append(seen, r["packets_out"].(float64))
				if r["bytes_out"].(float64) != 38*r["packets_out"].(float64) || r["start"] == "" || r["rule"] != "r0" {
					t.Errorf("interim record %v", r)
				}
			}
		}
		rec.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("interim records %v after 20 s; stats %+v", seen, l.Stats())
		}
	}
	if seen[1] <= seen[0] {
		t.Fatalf("interim packet counts %v do not grow", seen)
	}
}
