// Package tlsfp computes the JA4 and JA3 fingerprints of a TLS ClientHello.
//
// JA4 is FoxIO's TLS client fingerprint (BSD-3-Clause); only JA4 is
// implemented here, none of the other JA4+ methods (those are under the
// FoxIO License 1.1). JA3 is Salesforce's older fingerprint, still what many
// threat feeds carry. Both are computed from the bytes the proxy already
// read while peeking the hello, after crypto/tls accepted them, with no
// allocation: the work buffers come from a pool and the results are fixed
// size arrays.
//
// Specifications: https://github.com/FoxIO-LLC/ja4/blob/main/technical_details/JA4.md
// and https://github.com/salesforce/ja3.
package tlsfp

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"sync"
)

// JA4Len and JA3Len are the lengths of the two fingerprints as text.
const (
	JA4Len = 36 // t13d1516h2_8daaf6152771_e5627efa2ab1
	JA3Len = 32 // MD5 as lower-case hex
)

// Fingerprint holds both fingerprints of one hello. The zero value means
// "none" (not TLS, or the hello could not be read).
type Fingerprint struct {
	ja4 [JA4Len]byte
	ja3 [JA3Len]byte
	ok  bool
}

// Valid reports whether f holds fingerprints.
func (f *Fingerprint) Valid() bool { return f.ok }

// AppendJA4 appends the JA4 fingerprint (nothing when f is not valid).
func (f *Fingerprint) AppendJA4(b []byte) []byte {
	if !f.ok {
		return b
	}
	return append(b, f.ja4[:]...)
}

// AppendJA3 appends the JA3 fingerprint (nothing when f is not valid).
func (f *Fingerprint) AppendJA3(b []byte) []byte {
	if !f.ok {
		return b
	}
	return append(b, f.ja3[:]...)
}

// JA4 returns the JA4 fingerprint ("" when not valid). It allocates; the
// record path uses AppendJA4.
func (f *Fingerprint) JA4() string { return string(f.AppendJA4(nil)) }

// JA3 returns the JA3 fingerprint ("" when not valid).
func (f *Fingerprint) JA3() string { return string(f.AppendJA3(nil)) }

// ErrMalformed is returned for input that is not one complete ClientHello in
// TLS handshake records.
var ErrMalformed = errors.New("tlsfp: malformed client hello")

const (
	extServerName      = 0x0000
	extSupportedGroups = 0x000a
	extPointFormats    = 0x000b
	extSignatureAlgs   = 0x000d
	extALPN            = 0x0010
	extSupportedVers   = 0x002b
)

// isGREASE reports the reserved GREASE values of RFC 8701 (0x?a?a with both
// bytes equal), which both fingerprints ignore.
func isGREASE(v uint16) bool { return v&0x0f0f == 0x0a0a && v>>8 == v&0xff }

// scratch is reused across computations (sync.Pool): the reassembled
// handshake message when it spans records, the lists, and the text hashed.
type scratch struct {
	msg     []byte
	ciphers []uint16
	exts    []uint16
	text    []byte
}

var pool = sync.Pool{New: func() any {
	return &scratch{msg: make([]byte, 0, 4096), ciphers: make([]uint16, 0, 128), exts: make([]uint16, 0, 64), text: make([]byte, 0, 2048)}
}}

// Compute sets f from wire, the bytes a client sent first: TLS records of
// content type handshake whose first message is the ClientHello (it may be
// split across records; bytes after it are ignored). On error f is left
// not valid.
func (f *Fingerprint) Compute(wire []byte) error {
	f.ok = false
	s := pool.Get().(*scratch)
	defer pool.Put(s)
	body, err := s.helloBody(wire)
	if err != nil {
		return err
	}
	var h hello
	if err := h.parse(body); err != nil {
		return err
	}
	h.ja4(f, s)
	h.ja3(f, s)
	f.ok = true
	return nil
}

// helloBody returns the ClientHello body (after the 4-byte handshake
// header), reassembled from records into s.msg when it spans several.
func (s *scratch) helloBody(wire []byte) ([]byte, error) {
	s.msg = s.msg[:0]
	need := -1 // total handshake message length once known
	for len(wire) >= 5 {
		if wire[0] != 22 { // handshake
			return nil, ErrMalformed
		}
		n := int(wire[3])<<8 | int(wire[4])
		if len(wire) < 5+n || n == 0 {
			return nil, ErrMalformed
		}
		frag := wire[5 : 5+n]
		wire = wire[5+n:]
		if need < 0 && len(s.msg) == 0 && len(frag) >= 4 {
			if frag[0] != 1 { // client_hello
				return nil, ErrMalformed
			}
			need = 4 + (int(frag[1])<<16 | int(frag[2])<<8 | int(frag[3]))
			if len(frag) >= need {
				return frag[4:need], nil // the common case: no copy
			}
		}
		s.msg = append(s.msg, frag...)
		if need < 0 && len(s.msg) >= 4 {
			if s.msg[0] != 1 {
				return nil, ErrMalformed
			}
			need = 4 + (int(s.msg[1])<<16 | int(s.msg[2])<<8 | int(s.msg[3]))
		}
		if need >= 0 && len(s.msg) >= need {
			return s.msg[4:need], nil
		}
	}
	return nil, ErrMalformed
}

// hello is a parsed ClientHello: slices point into the message.
type hello struct {
	legacyVersion uint16
	ciphers       []byte // 2 bytes each
	exts          []byte // the whole extensions block
	hasSNI        bool
	groups        []byte // supported_groups list, 2 bytes each
	points        []byte // ec_point_formats list, 1 byte each
	sigAlgs       []byte // signature_algorithms list, 2 bytes each
	alpn          []byte // the first ALPN protocol
	maxVersion    uint16 // highest non-GREASE supported_versions entry, 0 if absent
}

// reader is a bounds-checked big-endian cursor.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) u8() int {
	if len(r.b) < 1 {
		r.bad = true
		return 0
	}
	v := int(r.b[0])
	r.b = r.b[1:]
	return v
}

func (r *reader) u16() int {
	if len(r.b) < 2 {
		r.bad = true
		return 0
	}
	v := int(r.b[0])<<8 | int(r.b[1])
	r.b = r.b[2:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if len(r.b) < n {
		r.bad = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (h *hello) parse(body []byte) error {
	r := reader{b: body}
	h.legacyVersion = uint16(r.u16())
	r.bytes(32)     // random
	r.bytes(r.u8()) // session id
	h.ciphers = r.bytes(r.u16())
	r.bytes(r.u8()) // compression methods
	if r.bad || len(h.ciphers)%2 != 0 {
		return ErrMalformed
	}
	if len(r.b) == 0 {
		return nil // no extensions (allowed before TLS 1.3)
	}
	h.exts = r.bytes(r.u16())
	if r.bad {
		return ErrMalformed
	}
	e := reader{b: h.exts}
	for len(e.b) > 0 {
		typ := e.u16()
		data := e.bytes(e.u16())
		if e.bad {
			return ErrMalformed
		}
		d := reader{b: data}
		switch typ {
		case extServerName:
			h.hasSNI = true
		case extSupportedGroups:
			h.groups = d.bytes(d.u16())
		case extPointFormats:
			h.points = d.bytes(d.u8())
		case extSignatureAlgs:
			h.sigAlgs = d.bytes(d.u16())
		case extALPN:
			list := reader{b: d.bytes(d.u16())}
			h.alpn = list.bytes(list.u8())
			if list.bad {
				h.alpn = nil
			}
			d.bad = false // an empty list just means no ALPN value
		case extSupportedVers:
			list := reader{b: d.bytes(d.u8())}
			for len(list.b) >= 2 {
				if v := uint16(list.u16()); !isGREASE(v) && v > h.maxVersion {
					h.maxVersion = v
				}
			}
		}
		if d.bad || len(h.groups)%2 != 0 || len(h.sigAlgs)%2 != 0 {
			return ErrMalformed
		}
	}
	return nil
}

// u16s appends the non-GREASE 16-bit values of list to dst.
func u16s(dst []uint16, list []byte) []uint16 {
	for i := 0; i+1 < len(list); i += 2 {
		if v := uint16(list[i])<<8 | uint16(list[i+1]); !isGREASE(v) {
			dst = append(dst, v)
		}
	}
	return dst
}

// extTypes appends the non-GREASE extension types in order.
func extTypes(dst []uint16, exts []byte) []uint16 {
	for len(exts) >= 4 {
		t := uint16(exts[0])<<8 | uint16(exts[1])
		n := int(exts[2])<<8 | int(exts[3])
		exts = exts[4+n:] // bounds checked by parse
		if !isGREASE(t) {
			dst = append(dst, t)
		}
	}
	return dst
}

func appendHex4(b []byte, v uint16) []byte {
	const digits = "0123456789abcdef"
	return append(b, digits[v>>12], digits[v>>8&0xf], digits[v>>4&0xf], digits[v&0xf])
}

func appendHexList(b []byte, vs []uint16) []byte {
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendHex4(b, v)
	}
	return b
}

// hash12 writes the first 12 hex digits of sha256(text), or twelve zeros
// for empty text (the JA4 convention for "no values").
func hash12(dst []byte, text []byte) {
	if len(text) == 0 {
		copy(dst, "000000000000")
		return
	}
	sum := sha256.Sum256(text)
	hex.Encode(dst[:12], sum[:6])
}

func twoDigits(dst []byte, n int) {
	n = min(n, 99)
	dst[0], dst[1] = byte('0'+n/10), byte('0'+n%10)
}

func alnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
}

// ja4 computes JA4 (the _a_b_c form: sorted lists, hashed).
func (h *hello) ja4(f *Fingerprint, s *scratch) {
	o := f.ja4[:]
	o[0] = 't' // TLS over TCP: the proxy sees no QUIC or DTLS
	v := h.legacyVersion
	if h.maxVersion != 0 {
		v = h.maxVersion
	}
	copy(o[1:3], versionCode(v))
	o[3] = 'i'
	if h.hasSNI {
		o[3] = 'd'
	}
	s.ciphers = u16s(s.ciphers[:0], h.ciphers)
	s.exts = extTypes(s.exts[:0], h.exts)
	twoDigits(o[4:6], len(s.ciphers))
	twoDigits(o[6:8], len(s.exts))
	switch a := h.alpn; {
	case len(a) == 0:
		o[8], o[9] = '0', '0'
	case alnum(a[0]) && alnum(a[len(a)-1]):
		o[8], o[9] = a[0], a[len(a)-1]
	default:
		// Spec: the first and last characters of the value's hex form.
		const digits = "0123456789abcdef"
		o[8], o[9] = digits[a[0]>>4], digits[a[len(a)-1]&0xf]
	}
	o[10] = '_'
	slices.Sort(s.ciphers)
	s.text = appendHexList(s.text[:0], s.ciphers)
	hash12(o[11:23], s.text)
	o[23] = '_'
	// Extensions sorted, without SNI and ALPN, then "_" and the signature
	// algorithms in the order sent (no "_" when there are none).
	s.exts = slices.DeleteFunc(s.exts, func(t uint16) bool { return t == extServerName || t == extALPN })
	slices.Sort(s.exts)
	s.text = appendHexList(s.text[:0], s.exts)
	if len(h.sigAlgs) > 0 {
		s.text = append(s.text, '_')
		for i := 0; i+1 < len(h.sigAlgs); i += 2 {
			if i > 0 {
				s.text = append(s.text, ',')
			}
			s.text = appendHex4(s.text, uint16(h.sigAlgs[i])<<8|uint16(h.sigAlgs[i+1]))
		}
	}
	hash12(o[24:36], s.text)
}

func versionCode(v uint16) string {
	switch v {
	case 0x0304:
		return "13"
	case 0x0303:
		return "12"
	case 0x0302:
		return "11"
	case 0x0301:
		return "10"
	case 0x0300:
		return "s3"
	case 0x0002:
		return "s2"
	}
	return "00"
}

// ja3 computes JA3: md5 of "version,ciphers,extensions,groups,points", each
// list of decimal values joined by "-", GREASE left out, original order.
func (h *hello) ja3(f *Fingerprint, s *scratch) {
	t := s.text[:0]
	t = appendDec(t, int(h.legacyVersion))
	t = append(t, ',')
	t = appendDecList(t, u16s(s.ciphers[:0], h.ciphers))
	t = append(t, ',')
	t = appendDecList(t, extTypes(s.exts[:0], h.exts))
	t = append(t, ',')
	t = appendDecList(t, u16s(s.ciphers[:0], h.groups))
	t = append(t, ',')
	for i, p := range h.points {
		if i > 0 {
			t = append(t, '-')
		}
		t = appendDec(t, int(p))
	}
	s.text = t
	sum := md5.Sum(t)
	hex.Encode(f.ja3[:], sum[:])
}

func appendDecList(b []byte, vs []uint16) []byte {
	for i, v := range vs {
		if i > 0 {
			b = append(b, '-')
		}
		b = appendDec(b, int(v))
	}
	return b
}

func appendDec(b []byte, v int) []byte {
	var d [5]byte
	i := len(d)
	for {
		i--
		d[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(b, d[i:]...)
}
