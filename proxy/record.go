package proxy

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gwlbproxy/gwlbproxy/proxy/schema"
	"github.com/gwlbproxy/gwlbproxy/proxy/tlsfp"
)

// Recorder receives one JSON object per request or connection. The callee
// copies record (the proxy reuses the buffer); a non-nil error means the
// record was not accepted. m carries the record's metric fields typed
// (schema.Metrics), so a consumer that counts requests (logship's EMF)
// never parses the JSON. logship implements it.
type Recorder interface {
	ShipRequest(ts time.Time, record []byte, m schema.Metrics) error
}

// Record is one log record. Field names in JSON are the snake_case forms
// below; numbers are JSON numbers; empty strings and zero numbers are still
// written so every record has the same shape.
//
// endpoint_id is "vpce-" + 17 lower-case hex digits (the way AWS names GWLB
// endpoints), or "" when the connection did not come from a tunnel.
type Record struct {
	Time          time.Time
	RecordID      string
	InstanceID    string
	EndpointID    string
	ClientIP      string
	ClientPort    uint16
	DstIP         string
	DstPort       uint16
	SNI           string
	Host          string
	Method        string
	Scheme        string
	Path          string
	Status        int
	Action        string
	Rule          string
	BytesIn       int64
	BytesOut      int64
	DurationMS    float64
	TLSVersion    string
	ALPN          string
	UpstreamError string
	UserAgent     string
	// Bind is the destination-binding outcome for the name the decision
	// was taken on: match, mismatch, resolve-failed, none (rule opt-out),
	// off, or "" when no name was decided on. BindName is that name and
	// BindAnswers (on a mismatch) the addresses it resolves to.
	Bind        string
	BindName    string
	BindAnswers string
	// Stalled names the side that made no progress for
	// progress_timeout: client_send, client_read, upstream_read; "" when
	// nothing stalled.
	Stalled string
	// Fingerprint is the JA4 and JA3 of the client's ClientHello (TLS
	// connections only; written as "ja4" and "ja3", "" when none).
	Fingerprint tlsfp.Fingerprint
	// PolicyVersion identifies the policy that decided (reload.go's
	// PolicyVersion: a hash of the effective policy, "@" and the policy
	// source's version when it has one).
	PolicyVersion string
}

// AppendJSON appends r as one JSON object (no newline) to b. Every string is
// escaped for JSON and additionally has all control characters (C0, DEL, C1),
// U+2028/2029 and invalid UTF-8 escaped or replaced, and is cut to maxField
// bytes (a "…" marks the cut): no CRLF, ANSI or JSON injection reaches a
// log line. It allocates nothing when b has room.
func (r *Record) AppendJSON(b []byte, maxField int) []byte {
	return r.appendJSON(b, maxField, nil)
}

// Metrics returns the values of r that the per-request metrics count.
func (r *Record) Metrics() schema.Metrics {
	return schema.Metrics{Action: r.Action, Status: r.Status, DurationMS: r.DurationMS}
}

// appendJSON takes the record id as bytes (hex, written as is) when id is
// non-nil, so the hot path need not make a string of it.
func (r *Record) appendJSON(b []byte, maxField int, id []byte) []byte {
	b = append(b, `{"time":"`...)
	b = r.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if id != nil {
		b = append(b, `,"record_id":"`...)
		b = append(b, id...)
		b = append(b, '"')
	} else {
		b = appendStr(b, "record_id", r.RecordID, maxField)
	}
	b = appendStr(b, "instance_id", r.InstanceID, maxField)
	b = appendStr(b, "endpoint_id", r.EndpointID, maxField)
	b = appendStr(b, "client_ip", r.ClientIP, maxField)
	b = appendInt(b, "client_port", int64(r.ClientPort))
	b = appendStr(b, "dst_ip", r.DstIP, maxField)
	b = appendInt(b, "dst_port", int64(r.DstPort))
	b = appendStr(b, "sni", r.SNI, maxField)
	b = appendStr(b, "host", r.Host, maxField)
	b = appendStr(b, "method", r.Method, maxField)
	b = appendStr(b, "scheme", r.Scheme, maxField)
	b = appendStr(b, "path", r.Path, maxField)
	b = appendInt(b, schema.KeyStatus, int64(r.Status))
	b = appendStr(b, schema.KeyAction, r.Action, maxField)
	b = appendStr(b, "rule", r.Rule, maxField)
	b = appendInt(b, "bytes_in", r.BytesIn)
	b = appendInt(b, "bytes_out", r.BytesOut)
	b = append(b, `,"`+schema.KeyDurationMS+`":`...)
	b = strconv.AppendFloat(b, r.DurationMS, 'f', 3, 64)
	b = appendStr(b, "tls_version", r.TLSVersion, maxField)
	b = appendStr(b, "alpn", r.ALPN, maxField)
	b = appendStr(b, "upstream_error", r.UpstreamError, maxField)
	b = appendStr(b, "user_agent", r.UserAgent, maxField)
	b = appendStr(b, "bind", r.Bind, maxField)
	b = appendStr(b, "bind_name", r.BindName, maxField)
	b = appendStr(b, "bind_answers", r.BindAnswers, maxField)
	b = appendStr(b, "stalled", r.Stalled, maxField)
	b = appendStr(b, "policy_version", r.PolicyVersion, maxField)
	// Fingerprints are hex, digits and '_' only: no escaping needed.
	b = append(b, `,"ja4":"`...)
	b = r.Fingerprint.AppendJA4(b)
	b = append(b, `","ja3":"`...)
	b = r.Fingerprint.AppendJA3(b)
	return append(b, '"', '}')
}

func appendInt(b []byte, key string, v int64) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, v, 10)
}

func appendStr(b []byte, key, s string, max int) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, `":"`...)
	b = appendEscaped(b, s, max)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendEscaped writes s as the inside of a JSON string, capping the input
// consumed at max bytes.
func appendEscaped(b []byte, s string, max int) []byte {
	cut := false
	if len(s) > max {
		s = s[:max]
		cut = true
	}
	for i := 0; i < len(s); {
		// Copy a run of printable ASCII needing no escape at once.
		j := i
		for j < len(s) && plainJSON(s[j]) {
			j++
		}
		if j > i {
			b = append(b, s[i:j]...)
			if i = j; i == len(s) {
				break
			}
		}
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			if cut && len(s)-i < utf8.UTFMax && !utf8.FullRuneInString(s[i:]) {
				i = len(s) // rune split by the cap: drop it
				continue
			}
			b = append(b, `\ufffd`...)
		case r >= 0x80 && r <= 0x9f, r == 0x2028, r == 0x2029:
			b = append(b, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	if cut {
		b = append(b, "…"...)
	}
	return b
}

// plainJSON says c is copied into a JSON string as is.
func plainJSON(c byte) bool {
	return c >= 0x20 && c < 0x7f && c != '"' && c != '\\'
}

// recordIDs makes 128-bit record ids: 64 random bits chosen at start and a
// 64-bit counter, 32 hex digits. Unique across restarts and instances
// without a syscall per record.
type recordIDs struct {
	prefix [8]byte
	n      atomic.Uint64
}

func newRecordIDs() (*recordIDs, error) {
	g := &recordIDs{}
	if _, err := rand.Read(g.prefix[:]); err != nil {
		return nil, fmt.Errorf("record id prefix: %w", err)
	}
	return g, nil
}

// next returns a new id in a 32-byte array.
func (g *recordIDs) next() (out [32]byte) {
	hex.Encode(out[:16], g.prefix[:])
	v := g.n.Add(1)
	for i := 31; i >= 16; i-- {
		out[i] = hexDigits[v&0xf]
		v >>= 4
	}
	return out
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// JSONLines is a Recorder writing one record per line to W; for tests and
// for running without logship. Safe for concurrent use.
type JSONLines struct {
	mu sync.Mutex
	w  *bufio.Writer
}

// NewJSONLines wraps w.
func NewJSONLines(w io.Writer) *JSONLines { return &JSONLines{w: bufio.NewWriter(w)} }

// ShipRequest writes record and a newline and flushes.
func (j *JSONLines) ShipRequest(_ time.Time, record []byte, _ schema.Metrics) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.w.Write(record)
	j.w.WriteByte('\n')
	return j.w.Flush()
}
