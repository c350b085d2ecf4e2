package batch

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// MinTruncateLimit is the smallest limit Truncate can honour while keeping
// the marker fields and a record_id.
const MinTruncateLimit = 512

// Marker fields added to a truncated record.
const (
	FieldTruncated     = "logship_truncated"
	FieldOriginalBytes = "logship_original_bytes"
	FieldDropped       = "logship_dropped_fields"
)

type field struct {
	key []byte          // encoded key, with quotes
	val json.RawMessage // encoded value
}

// Truncate returns rec unchanged if it is at most limit bytes. Otherwise it
// returns a valid JSON object of at most limit bytes that keeps every field
// it can (record_id and time always), shortens the longest string values
// first, drops non-string values that cannot be shortened, and adds
// "logship_truncated": true, the original size and the dropped field names.
// A record that is not a JSON object is wrapped as a "raw" string prefix.
// limit must be at least MinTruncateLimit.
func Truncate(rec []byte, limit int) []byte {
	if len(rec) <= limit {
		return rec
	}
	limit = max(limit, MinTruncateLimit)
	fields, ok := parseObject(rec)
	if !ok {
		raw, _ := json.Marshal(string(rec[:min(len(rec), limit)]))
		fields = []field{{key: []byte(`"raw"`), val: raw}}
	}
	var dropped []string
	for {
		out := encode(fields, len(rec), dropped)
		excess := len(out) - limit
		if excess <= 0 {
			return out
		}
		i := largest(fields)
		if i < 0 {
			// Only protected fields left and still too big: cut the
			// largest protected string as a last resort.
			i = largestAny(fields)
			if i < 0 {
				return out // cannot happen with limit >= MinTruncateLimit
			}
		}
		f := &fields[i]
		var s string
		if f.val[0] == '"' && json.Unmarshal(f.val, &s) == nil && len(f.val) > excess+16 {
			// Cut the decoded string proportionally to the encoded excess
			// (escapes make encoded longer than decoded), on a rune boundary.
			keep := len(s) - (excess+8)*len(s)/len(f.val) - 8
			if keep < 0 {
				keep = 0
			}
			for keep > 0 && !utf8.RuneStart(s[keep]) {
				keep--
			}
			f.val, _ = json.Marshal(s[:keep] + "…")
			continue
		}
		k, _ := strconv.Unquote(string(f.key))
		dropped = append(dropped, k)
		fields = append(fields[:i], fields[i+1:]...)
	}
}

func protected(key []byte) bool {
	return bytes.Equal(key, []byte(`"record_id"`)) || bytes.Equal(key, []byte(`"time"`))
}

func largest(fs []field) int {
	best := -1
	for i, f := range fs {
		if !protected(f.key) && (best < 0 || len(f.val) > len(fs[best].val)) {
			best = i
		}
	}
	return best
}

func largestAny(fs []field) int {
	best := -1
	for i, f := range fs {
		if f.val[0] == '"' && len(f.val) > 32 && (best < 0 || len(f.val) > len(fs[best].val)) {
			best = i
		}
	}
	return best
}

func encode(fs []field, orig int, dropped []string) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for _, f := range fs {
		b.Write(f.key)
		b.WriteByte(':')
		b.Write(f.val)
		b.WriteByte(',')
	}
	b.WriteString(`"` + FieldTruncated + `":true,"` + FieldOriginalBytes + `":`)
	b.WriteString(strconv.Itoa(orig))
	if len(dropped) > 0 {
		d, _ := json.Marshal(dropped)
		b.WriteString(`,"` + FieldDropped + `":`)
		b.Write(d)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// parseObject splits a JSON object into its top-level fields, keeping order
// and the exact encoding of each value.
func parseObject(rec []byte) ([]field, bool) {
	dec := json.NewDecoder(bytes.NewReader(rec))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, false
	}
	var fs []field
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, false
		}
		k, ok := t.(string)
		if !ok {
			return nil, false
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, false
		}
		key, _ := json.Marshal(k)
		fs = append(fs, field{key: key, val: bytes.TrimSpace(v)})
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return nil, false
	}
	return fs, true
}
