//go:build linux

package fastpath

import (
	"testing"
	"time"
)

// sweepKey is a distinct flow key for the sweep tests.
func sweepKey(i byte) fastpathFlowKey {
	var k fastpathFlowKey
	k.Lo[0], k.Lo[3] = 198, i
	k.Hi[0], k.Hi[3] = 203, i
	k.LoPort, k.HiPort, k.Proto, k.Endpoint = 1000+uint16(i), 80, 6, 0x0123456789abcdef
	return k
}

// putSweepFlow stores a TCP flow last seen at seen (monotonic ns) in the
// real flow map.
func putSweepFlow(t *testing.T, f *Fastpath, k fastpathFlowKey, seen uint64) {
	t.Helper()
	v := fastpathFlow{Seen: seen, Tcp: 1, HdrLen: 8}
	if err := f.objs.Flows.Put(&k, &v); err != nil {
		t.Fatalf("put: %v", err)
	}
}

// TestSweepDeletesExpiredFlows: Sweep deletes the flows idle longer than
// their timeout and keeps the others.
func TestSweepDeletesExpiredFlows(t *testing.T) {
	f := needBPF(t)
	now := monoNow()
	old := now - uint64(time.Hour)
	putSweepFlow(t, f, sweepKey(1), old)
	putSweepFlow(t, f, sweepKey(2), now)
	if n := f.Sweep(time.Minute, time.Minute); n != 1 {
		t.Fatalf("Sweep deleted %d flows, want 1", n)
	}
	var v fastpathFlow
	if err := f.objs.Flows.Lookup(sweepKey(1), &v); err == nil {
		t.Error("expired flow kept")
	}
	if err := f.objs.Flows.Lookup(sweepKey(2), &v); err != nil {
		t.Errorf("live flow deleted: %v", err)
	}
}

// TestSweepKeepsFlowRefreshedAfterListing plays the race between the
// sweep's two steps on the real map: a flow listed as expired gets a
// packet (its seen time refreshed, as the BPF programs do) before the
// delete step, and must survive; one that stayed idle is deleted.
func TestSweepKeepsFlowRefreshedAfterListing(t *testing.T) {
	f := needBPF(t)
	now := monoNow()
	old := now - uint64(time.Hour)
	putSweepFlow(t, f, sweepKey(1), old)
	putSweepFlow(t, f, sweepKey(2), old)
	expired := func(_ *fastpathFlowKey, v *fastpathFlow) bool {
		return time.Duration(monoNow()-min(monoNow(), v.Seen)) > time.Minute
	}
	victims := f.match(expired)
	if len(victims) != 2 {
		t.Fatalf("listed %d expired flows, want 2", len(victims))
	}
	putSweepFlow(t, f, sweepKey(2), monoNow()) // a packet in between
	if n := f.deleteIf(victims, expired); n != 1 {
		t.Errorf("deleted %d flows, want 1", n)
	}
	var v fastpathFlow
	if err := f.objs.Flows.Lookup(sweepKey(2), &v); err != nil {
		t.Errorf("flow refreshed after listing was deleted: %v", err)
	}
	if err := f.objs.Flows.Lookup(sweepKey(1), &v); err == nil {
		t.Error("flow still idle was kept")
	}
}
