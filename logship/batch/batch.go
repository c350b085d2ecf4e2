// Package batch assembles log records into PutLogEvents-sized batches:
// at most 1,048,576 bytes counting 26 bytes of overhead per event, at most
// 10,000 events, chronological, spanning at most 24 hours.
//
// A Batch owns one arena holding every message back to back, so filling
// and sending a batch costs no allocation per record once the arena and
// event slice have grown to their working size; batches are reused.
package batch

import (
	"cmp"
	"slices"
	"time"
	"unsafe"
)

// CloudWatch Logs PutLogEvents quotas.
const (
	EventOverhead  = 26
	MaxBatchBytes  = 1_048_576
	MaxBatchEvents = 10_000
	MaxSpan        = 24 * time.Hour
	// MaxEventBytes is the largest message that fits a batch on its own.
	MaxEventBytes = MaxBatchBytes - EventOverhead
)

// Limits bound one batch. The zero value means the CloudWatch quotas.
type Limits struct {
	MaxBytes  int // message bytes plus EventOverhead per event
	MaxEvents int
	MaxSpan   time.Duration
}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = MaxBatchBytes
	}
	if l.MaxEvents <= 0 {
		l.MaxEvents = MaxBatchEvents
	}
	if l.MaxSpan <= 0 {
		l.MaxSpan = MaxSpan
	}
	return l
}

// Event is one record in a batch; its message lives in the batch arena.
type Event struct {
	TS  int64 // Unix milliseconds
	Seq uint64
	off uint32
	len uint32
}

// Batch is a set of events plus the spool range it covers.
type Batch struct {
	// From and To delimit the spool sequences [From, To) this batch
	// accounts for; the range is acknowledged once the batch is done.
	From, To uint64
	// Created is when the first event was added (for the flush timer).
	Created time.Time

	Events []Event
	arena  []byte
	size   int
	minTS  int64
	maxTS  int64
	limits Limits
}

// New returns an empty batch with the given limits.
func New(l Limits) *Batch { return &Batch{limits: l.withDefaults()} }

// Reset empties the batch, keeping its storage.
func (b *Batch) Reset() {
	b.From, b.To = 0, 0
	b.Created = time.Time{}
	b.Events = b.Events[:0]
	b.arena = b.arena[:0]
	b.size = 0
}

// Len is the number of events.
func (b *Batch) Len() int { return len(b.Events) }

// Size is the counted size: message bytes plus overhead per event.
func (b *Batch) Size() int { return b.size }

// Span is the time between the oldest and newest event.
func (b *Batch) Span() time.Duration {
	if len(b.Events) == 0 {
		return 0
	}
	return time.Duration(b.maxTS-b.minTS) * time.Millisecond
}

// Fits reports whether an event of msgLen bytes at ts can be added without
// breaking a limit. An empty batch accepts any event up to the byte limit.
func (b *Batch) Fits(ts int64, msgLen int) bool {
	if len(b.Events) == 0 {
		return msgLen+EventOverhead <= b.limits.MaxBytes
	}
	if len(b.Events) >= b.limits.MaxEvents || b.size+msgLen+EventOverhead > b.limits.MaxBytes {
		return false
	}
	lo, hi := min(b.minTS, ts), max(b.maxTS, ts)
	return time.Duration(hi-lo)*time.Millisecond <= b.limits.MaxSpan
}

// Add copies msg into the batch. The caller checks Fits first.
func (b *Batch) Add(seq uint64, ts int64, msg []byte) {
	if len(b.Events) == 0 {
		b.minTS, b.maxTS = ts, ts
	} else {
		b.minTS, b.maxTS = min(b.minTS, ts), max(b.maxTS, ts)
	}
	b.Events = append(b.Events, Event{TS: ts, Seq: seq, off: uint32(len(b.arena)), len: uint32(len(msg))})
	b.arena = append(b.arena, msg...)
	b.size += len(msg) + EventOverhead
}

// Message returns event i's message (a view into the arena).
func (b *Batch) Message(i int) []byte {
	e := b.Events[i]
	return b.arena[e.off : e.off+e.len]
}

// Msg returns e's message; e must belong to this batch.
func (b *Batch) Msg(e Event) []byte { return b.arena[e.off : e.off+e.len] }

// MsgString returns e's message as a string sharing the arena's memory,
// with no copy. It is valid only until the batch is Reset or reused;
// the sinks use it for the duration of one PutLogEvents call.
func (b *Batch) MsgString(e Event) string {
	if e.len == 0 {
		return ""
	}
	return unsafe.String(&b.arena[e.off], int(e.len))
}

// Arena returns the backing bytes of all messages (for zero-copy string
// views that must not outlive the batch).
func (b *Batch) Arena() []byte { return b.arena }

// Sort orders events chronologically, keeping arrival order among equal
// timestamps. Records usually arrive in order, so check first.
func (b *Batch) Sort() {
	byTS := func(x, y Event) int { return cmp.Compare(x.TS, y.TS) }
	if !slices.IsSortedFunc(b.Events, byTS) {
		slices.SortStableFunc(b.Events, byTS)
	}
}
