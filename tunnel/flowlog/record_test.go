//go:build linux

package flowlog

import (
	"context"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func keysInOrder(t *testing.T, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytesReader(b))
	var keys []string
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %s", b)
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k.(string))
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func TestRecordJSON(t *testing.T) {
	start := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	r := Record{
		Type: TypeFlow, RecordID: "x1", InstanceID: "i-1", EndpointID: 0x0123456789abcdef, Protocol: 17,
		Client: netip.MustParseAddrPort("198.19.0.10:40000"), Dst: netip.MustParseAddrPort("203.0.113.30:7"),
		NAT: netip.MustParseAddrPort("198.18.3.2:40000"), Action: "allow", Rule: `we"ird\` + "\x1b",
		PacketsOut: 1, BytesOut: 128, PacketsIn: 2, BytesIn: 256, Start: start, End: start.Add(1500 * time.Millisecond), ICMPType: -1,
	}
	b := r.AppendJSON(nil)
	if got := keysInOrder(t, b); !reflect.DeepEqual(got, RecordFields) {
		t.Fatalf("keys %v\nwant %v", got, RecordFields)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if m["endpoint_id"] != "vpce-00123456789abcdef" || m["protocol"] != "udp" || m["bytes_out"] != 128.0 || m["duration_ms"] != 1500.0 || m["rule"] != "we\"ird\\\x1b" {
		t.Fatalf("record %s", b)
	}
	var s summary
	s.flows = 3
	b = s.appendJSON(nil, start, "i-1", "x2", time.Minute)
	if got := keysInOrder(t, b); !reflect.DeepEqual(got, SummaryFields) {
		t.Fatalf("summary keys %v\nwant %v", got, SummaryFields)
	}
	if testing.AllocsPerRun(100, func() { b = r.AppendJSON(b[:0]) }) != 0 {
		t.Error("AppendJSON allocates with a buffer that has room")
	}
}

// FuzzDeniedRecord: any NFLOG message decodes or is refused, never panics,
// and what decodes is valid JSON.
func FuzzDeniedRecord(f *testing.F) {
	f.Add([]byte{2, 0, 0x12, 0x95, 8, 0, 10, 0, 'n', 'p', ':', 'x'})
	pkt := []byte{0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 19, 0, 10, 203, 0, 113, 30, 0x9c, 0x40, 0x1f, 0x90}
	attr := func(typ uint16, v []byte) []byte {
		n := 4 + len(v)
		b := append([]byte{byte(n), byte(n >> 8), byte(typ), byte(typ >> 8)}, v...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	msg := append([]byte{2, 0, 0x12, 0x95}, attr(nfulaPrefix, []byte("np:default\x00"))...)
	msg = append(msg, attr(nfulaPayload, pkt)...)
	f.Add(msg)
	l := &Logger{src: fakeSource{}, instanceID: "i"}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, ok := l.deniedRecord(data)
		if !ok {
			return
		}
		var m map[string]any
		if err := json.Unmarshal(r.AppendJSON(nil), &m); err != nil {
			t.Fatalf("invalid JSON: %v", err)
		}
	})
}

func TestDeniedRecord(t *testing.T) {
	pkt := []byte{0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 19, 0, 10, 203, 0, 113, 30, 0x9c, 0x40, 0x1f, 0x90}
	attr := func(typ uint16, v []byte) []byte {
		n := 4 + len(v)
		b := append([]byte{byte(n), byte(n >> 8), byte(typ), byte(typ >> 8)}, v...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	for _, c := range []struct {
		prefix, rule, version string
	}{
		{"np:default", "default", "np-000000000001"}, {"np:ssh-a", "ssh-a", "np-000000000001"},
		{"np:ssh-a@np-0123456789ab", "ssh-a", "np-0123456789ab"}, {"np:ssh-a@bad version", "ssh-a", "np-000000000001"},
		{"np:bad name\x1b", "unknown", "np-000000000001"}, {"other", "unknown", "np-000000000001"},
	} {
		msg := append([]byte{2, 0, 0x12, 0x95}, attr(nfulaPrefix, []byte(c.prefix+"\x00"))...)
		msg = append(msg, attr(nfulaPayload, pkt)...)
		msg = append(msg, attr(nfulaIfindexIndev, []byte{0, 0, 0, 7})...)
		l := &Logger{src: fakeSource{}, instanceID: "i"}
		r, ok := l.deniedRecord(msg)
		if !ok {
			t.Fatalf("%q: not decoded", c.prefix)
		}
		if r.Rule != c.rule || r.PolicyVersion != c.version || r.Client.String() != "198.19.0.10:40000" || r.Dst.String() != "203.0.113.30:8080" || r.Protocol != 6 || r.BytesOut != 60 || r.EndpointID != 0x77 {
			t.Fatalf("%q: %+v", c.prefix, r)
		}
	}
	for _, bad := range [][]byte{nil, {1, 2}, {2, 0, 0, 0, 200, 0, 9, 0}} {
		l := &Logger{src: fakeSource{}}
		if _, ok := l.deniedRecord(bad); ok {
			t.Errorf("%x decoded", bad)
		}
	}
}

// TestDeniedPerSource: at most denied_per_source records per source per
// interval; the rest are counted in the summary, which is written and the
// window reset at the next interval.
func TestDeniedPerSource(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DeniedPerSource = 3
	cfg.SummaryInterval = time.Second
	cfg.MarkBase, cfg.MarkMask = 0x47570000, 0xffff0000
	rec := &memRecorder{}
	l, err := newLogger(cfg, fakeSource{}, rec, "i", nil, nil, -1)
	if err != nil {
		t.Fatal(err)
	}
	a, b := netip.MustParseAddr("198.19.0.10"), netip.MustParseAddr("198.19.0.11")
	admitted := 0
	for range 10 {
		if l.admitDenied(a) {
			admitted++
		}
	}
	if !l.admitDenied(b) || admitted != 3 {
		t.Fatalf("admitted %d of 10 from a (want 3), b refused", admitted)
	}
	if st := l.Stats(); st.DeniedSuppressed != 7 {
		t.Fatalf("suppressed %d, want 7", st.DeniedSuppressed)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.writer(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec.mu.Lock()
		var got map[string]any
		for _, r := range rec.recs {
			if r["record_type"] == TypeSummary {
				got = r
			}
		}
		rec.mu.Unlock()
		if got != nil {
			if got["denied_suppressed"] != 7.0 || got["denied_sources"] != 1.0 {
				t.Fatalf("summary %v", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no summary")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	l.wg.Wait()
	if !l.admitDenied(a) {
		t.Fatal("the window did not reset after the summary")
	}
}

// TestOverrunHealth: an overrun is counted, in the next summary, and
// turns Health red.
func TestOverrunHealth(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MarkBase, cfg.MarkMask = 0x47570000, 0xffff0000
	l, err := newLogger(cfg, fakeSource{}, &memRecorder{}, "i", nil, nil, -1)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Health(); err != nil {
		t.Fatal(err)
	}
	l.overrun(&l.c.ctOverruns, "conntrack")
	if err := l.Health(); err == nil || !strings.Contains(err.Error(), "overruns") {
		t.Fatalf("health after an overrun: %v", err)
	}
	if l.Stats().ConntrackOverruns != 1 || l.sum.overruns != 1 {
		t.Fatalf("stats %+v", l.Stats())
	}
}
