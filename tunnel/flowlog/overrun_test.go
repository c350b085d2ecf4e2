//go:build linux

package flowlog

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/ti-mo/conntrack"
)

// TestKernelOverrun: a real ENOBUFS. The conntrack event socket gets the
// smallest receive buffer and nobody reads it while thousands of flows
// are destroyed at once (a conntrack flush); when reading starts, the
// kernel's overrun is counted, Health turns red naming it, and reading
// goes on (the events still queued become records).
func TestKernelOverrun(t *testing.T) {
	h := floodNS(t)
	cfg := DefaultConfig()
	cfg.ReadBuffer = 64 << 10
	cfg.InterimInterval = 0
	cfg.MarkBase, cfg.MarkMask = 0x47570000, 0xffff0000
	l, err := newLogger(cfg, fakeSource{}, &memRecorder{}, "i-overrun", nil, nil, int(h))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.inNS(enableAccounting); err != nil {
		t.Fatal(err)
	}
	if l.ct, err = l.dialConntrackEvents(); err != nil {
		t.Fatal(err)
	}
	const n = 5000
	if err := inns.Do(h, func() error {
		for i := 0; i < n; i++ {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 20000 + i}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
			if err != nil {
				return err
			}
			c.Write([]byte("x"))
			c.Close()
		}
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Flush() // n destroy events at once into a 64 KiB buffer
	}); err != nil {
		t.Fatal(err)
	}
	if err := l.Health(); err != nil {
		t.Fatalf("health before reading: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.readConntrack(ctx)
	defer func() {
		cancel()
		l.ct.Close()
		l.wg.Wait()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for l.Stats().ConntrackOverruns == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no overrun counted after %d destroy events into a 64 KiB buffer; stats %+v", n, l.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := l.Health(); err == nil || !strings.Contains(err.Error(), "overruns") {
		t.Fatalf("health after a kernel overrun: %v", err)
	}
	// Reading went on: what the buffer held became records.
	for len(l.queue) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no record after the overrun; stats %+v", l.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if e := l.readErrs.Load(); e != nil {
		t.Fatalf("reader stopped: %s", *e)
	}
	t.Logf("%d destroy events: %d overrun(s) counted, %d records queued, health: %v", n, l.Stats().ConntrackOverruns, len(l.queue), l.Health())
}
