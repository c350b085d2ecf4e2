package batch

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestFitsLimits(t *testing.T) {
	b := New(Limits{})
	msg := bytes.Repeat([]byte("x"), 1000)
	n := 0
	for b.Fits(int64(n), len(msg)) {
		b.Add(uint64(n), int64(n), msg)
		n++
	}
	if want := MaxBatchBytes / (1000 + EventOverhead); n != want {
		t.Fatalf("batch took %d events of 1000 bytes, want %d", n, want)
	}
	if b.Size() > MaxBatchBytes {
		t.Fatalf("size %d over limit", b.Size())
	}

	b = New(Limits{})
	for i := range MaxBatchEvents {
		if !b.Fits(0, 1) {
			t.Fatalf("refused event %d", i)
		}
		b.Add(uint64(i), 0, []byte("a"))
	}
	if b.Fits(0, 1) {
		t.Fatal("accepted event 10,001")
	}

	b = New(Limits{})
	b.Add(0, 0, []byte("a"))
	day := int64(24 * time.Hour / time.Millisecond)
	if !b.Fits(day, 1) || b.Fits(day+1, 1) || b.Fits(-1, 1) == false {
		t.Fatal("24 h span limit wrong")
	}
	b.Add(1, day, []byte("b"))
	if b.Fits(-1, 1) {
		t.Fatal("span check ignores older events")
	}

	b = New(Limits{})
	if !b.Fits(0, MaxEventBytes) || b.Fits(0, MaxEventBytes+1) {
		t.Fatal("single event limit wrong")
	}
}

func TestSortStable(t *testing.T) {
	b := New(Limits{})
	for i, ts := range []int64{5, 3, 5, 1, 3} {
		b.Add(uint64(i), ts, []byte{byte('a' + i)})
	}
	b.Sort()
	var got string
	for i := range b.Len() {
		got += string(b.Message(i))
	}
	if got != "dbeac" {
		t.Fatalf("sorted order %q, want dbeac", got)
	}
	if b.MsgString(b.Events[0]) != "d" {
		t.Fatal("MsgString")
	}
}

func TestTruncate(t *testing.T) {
	long := strings.Repeat("é<>\"\\x", 50_000)
	rec, _ := json.Marshal(map[string]any{
		"time": "2026-11-24T19:00:00Z", "record_id": "abc123", "path": long,
		"user_agent": long[:1000], "status": 200, "nested": map[string]any{"a": strings.Repeat("y", 5000)},
	})
	for _, limit := range []int{MinTruncateLimit, 1000, 4096, 100_000} {
		out := Truncate(rec, limit)
		if len(out) > limit {
			t.Fatalf("limit %d: got %d bytes", limit, len(out))
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("limit %d: invalid JSON: %v\n%s", limit, err, out)
		}
		if m["record_id"] != "abc123" || m[FieldTruncated] != true || m[FieldOriginalBytes] != float64(len(rec)) {
			t.Fatalf("limit %d: markers missing: %s", limit, out)
		}
		if limit == 100_000 && (m["status"] != float64(200) || m["user_agent"] == nil) {
			t.Fatalf("small fields should survive: %s", out[:200])
		}
	}
	if got := Truncate(rec, len(rec)); !bytes.Equal(got, rec) {
		t.Fatal("record at the limit must be unchanged")
	}
	// Not JSON: wrapped.
	out := Truncate(bytes.Repeat([]byte{0xff, 'a'}, 2000), 600)
	if !json.Valid(out) || len(out) > 600 {
		t.Fatalf("raw wrap: %d %s", len(out), out)
	}
}

func FuzzTruncate(f *testing.F) {
	f.Add([]byte(`{"record_id":"x","a":"`+strings.Repeat("b", 1000)+`"}`), 600)
	f.Add([]byte(`{"record_id":"x","a":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25]}`), 10)
	f.Add([]byte(`not json at all`), 0)
	f.Fuzz(func(t *testing.T, rec []byte, limit int) {
		limit = MinTruncateLimit + limit%4096
		if limit < MinTruncateLimit {
			limit += 4096
		}
		out := Truncate(rec, limit)
		if len(rec) <= limit {
			if !bytes.Equal(out, rec) {
				t.Fatal("short record changed")
			}
			return
		}
		if len(out) > limit {
			t.Fatalf("output %d > limit %d", len(out), limit)
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON: %q", out)
		}
	})
}
