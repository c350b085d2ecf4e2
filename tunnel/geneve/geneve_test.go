package geneve

import (
	"bytes"
	"encoding/binary"
	"testing"
)

var (
	ipv4Inner = []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2}
	ipv6Inner = append([]byte{0x60, 0, 0, 0, 0, 0, 17, 64}, make([]byte, 32)...)
)

func build(proto uint16, inner []byte, extra ...Option) []byte {
	b := AppendHeader(nil, 0, proto, 0x0123456789abcdef, 0xfedcba9876543210, 0xdeadbeef, extra...)
	return append(b, inner...)
}

func TestParseValid(t *testing.T) {
	unknown := Option{Class: 0x0200, Type: 7, Data: []byte{1, 2, 3, 4, 5}}
	tests := []struct {
		name  string
		proto uint16
		inner []byte
		extra []Option
		hlen  int
	}{
		{"ipv4", ProtoIPv4, ipv4Inner, nil, 40},
		{"ipv6", ProtoIPv6, ipv6Inner, nil, 40},
		{"unknown non-critical option kept", ProtoIPv4, ipv4Inner, []Option{unknown}, 52},
		{"unknown AWS type non-critical", ProtoIPv4, ipv4Inner, []Option{{Class: ClassAWS, Type: 9}}, 44},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pkt := build(tc.proto, tc.inner, tc.extra...)
			var h Header
			inner, r := Parse(pkt, &h)
			if r != OK {
				t.Fatalf("Parse: %v", r)
			}
			if len(h.Raw) != tc.hlen || !bytes.Equal(h.Raw, pkt[:tc.hlen]) {
				t.Fatalf("Raw = %x, want %x", h.Raw, pkt[:tc.hlen])
			}
			if !bytes.Equal(inner, tc.inner) {
				t.Fatalf("inner = %x", inner)
			}
			if h.Protocol != tc.proto || h.EndpointID != 0x0123456789abcdef ||
				h.AttachmentID != 0xfedcba9876543210 || h.Cookie != 0xdeadbeef || h.VNI != 0 {
				t.Fatalf("header = %+v", h)
			}
		})
	}
}

// TestParseGWLBCapture checks a header laid out exactly as GWLB sends it
// (hand-assembled, not via AppendHeader) including a non-zero VNI.
func TestParseGWLBCapture(t *testing.T) {
	hdr := []byte{
		0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x2a, 0x00, // 8 words of options, IPv4, VNI 42
		0x01, 0x08, 0x01, 0x02, 0x07, 0x6b, 0xc4, 0x93, 0xb8, 0x22, 0xcd, 0x32, // endpoint
		0x01, 0x08, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x34, // attachment
		0x01, 0x08, 0x03, 0x01, 0xca, 0xfe, 0xba, 0xbe, // cookie
	}
	var h Header
	inner, r := Parse(append(hdr, ipv4Inner...), &h)
	if r != OK || len(inner) != len(ipv4Inner) {
		t.Fatalf("Parse: %v", r)
	}
	if h.EndpointID != 0x076bc493b822cd32 || h.AttachmentID != 0x1234 || h.Cookie != 0xcafebabe || h.VNI != 42 {
		t.Fatalf("header = %+v", h)
	}
	if !bytes.Equal(AppendHeader(nil, 42, ProtoIPv4, h.EndpointID, h.AttachmentID, h.Cookie), hdr) {
		t.Fatal("AppendHeader does not reproduce GWLB's layout")
	}
}

func TestParseDrops(t *testing.T) {
	good := build(ProtoIPv4, ipv4Inner)
	mod := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	// rawOpts builds a header with the given options area (no AWS options
	// added automatically).
	rawOpts := func(flags byte, opts ...[]byte) []byte {
		var o []byte
		for _, x := range opts {
			o = append(o, x...)
		}
		b := []byte{byte(len(o) / 4), flags, 0x08, 0, 0, 0, 0, 0}
		b = append(b, o...)
		return append(b, ipv4Inner...)
	}
	ep := []byte{1, 8, 1, 2, 1, 2, 3, 4, 5, 6, 7, 8}
	at := []byte{1, 8, 2, 2, 1, 2, 3, 4, 5, 6, 7, 8}
	ck := []byte{1, 8, 3, 1, 1, 2, 3, 4}
	tests := []struct {
		name string
		pkt  []byte
		want Reason
	}{
		{"empty", nil, Truncated},
		{"short base", good[:7], Truncated},
		{"options overrun packet", good[:30], Truncated},
		{"no inner", good[:40], Truncated},
		{"version 1", mod(func(b []byte) []byte { b[0] |= 0x40; return b }), BadVersion},
		{"version 3", mod(func(b []byte) []byte { b[0] |= 0xc0; return b }), BadVersion},
		{"O bit", mod(func(b []byte) []byte { b[1] |= 0x80; return b }), Control},
		{"ethernet protocol", mod(func(b []byte) []byte { b[2], b[3] = 0x65, 0x58; return b }), BadProtocol},
		{"ipv4 proto with ipv6 inner", append(good[:40:40], ipv6Inner...), BadProtocol},
		{"ipv6 proto with ipv4 inner", mod(func(b []byte) []byte { b[2], b[3] = 0x86, 0xdd; return b }), BadProtocol},
		{"option length overruns header", rawOpts(0, ep, at, ck, []byte{2, 0, 5, 2}, []byte{0, 0, 0, 0}), BadOptionLength},
		{"endpoint wrong size", rawOpts(0, []byte{1, 8, 1, 1, 1, 2, 3, 4}, at, ck), BadOptionLength},
		{"cookie wrong size", rawOpts(0, ep, at, []byte{1, 8, 3, 2, 1, 2, 3, 4, 5, 6, 7, 8}), BadOptionLength},
		{"unknown critical", rawOpts(flagC, ep, at, ck, []byte{2, 0, 0x85, 0}), CriticalOption},
		{"unknown critical AWS type", rawOpts(flagC, ep, at, ck, []byte{1, 8, 0x81, 0}), CriticalOption},
		{"no options", rawOpts(0), NoEndpoint},
		{"no endpoint", rawOpts(0, at, ck), NoEndpoint},
		{"no attachment", rawOpts(0, ep, ck), NoAttachment},
		{"no cookie", rawOpts(0, ep, at), NoCookie},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Header
			inner, r := Parse(tc.pkt, &h)
			if r != tc.want {
				t.Fatalf("Parse = %v, want %v", r, tc.want)
			}
			if inner != nil {
				t.Fatalf("inner = %x on drop", inner)
			}
		})
	}
}

func TestCriticalFlagOnBuild(t *testing.T) {
	b := AppendHeader(nil, 0, ProtoIPv4, 1, 2, 3, Option{Class: 5, Type: 0x80})
	if b[1]&flagC == 0 {
		t.Fatal("C bit not set for a critical option")
	}
	var h Header
	if _, r := Parse(append(b, ipv4Inner...), &h); r != CriticalOption {
		t.Fatalf("Parse = %v", r)
	}
}

func TestReasonStrings(t *testing.T) {
	seen := map[string]bool{}
	for r := OK; r < NumReasons; r++ {
		s := r.String()
		if s == "" || s == "unknown" || seen[s] {
			t.Fatalf("reason %d has label %q", r, s)
		}
		seen[s] = true
	}
	if NumReasons.String() != "unknown" {
		t.Fatal("out of range reason")
	}
}

func TestNames(t *testing.T) {
	tests := []struct {
		id      uint64
		b60, hx string
	}{
		{0x0123456789abcdef, "887epl1uMf", "00123456789abcdef"},
		{0x76bc493b822cd32f, "e8WXgsTQDkf", "076bc493b822cd32f"},
		{0, "0", "00000000000000000"},
		{59, "X", "0000000000000003b"},
		{60, "10", "0000000000000003c"},
		{^uint64(0), "", "0ffffffffffffffff"},
	}
	for _, tc := range tests {
		got := Base60(tc.id)
		if tc.b60 != "" && got != tc.b60 {
			t.Errorf("Base60(%#x) = %q, want %q", tc.id, got, tc.b60)
		}
		if len(got) > 11 {
			t.Errorf("Base60(%#x) = %q longer than 11", tc.id, got)
		}
		if h := EndpointHex(tc.id); h != tc.hx {
			t.Errorf("EndpointHex(%#x) = %q, want %q", tc.id, h, tc.hx)
		}
		in, out := InterfaceNames(tc.id)
		if in != "gwi-"+got || out != "gwo-"+got || len(in) > 15 {
			t.Errorf("InterfaceNames(%#x) = %q, %q", tc.id, in, out)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(build(ProtoIPv4, ipv4Inner), uint64(1), uint64(2), uint32(3), []byte{1})
	f.Add(build(ProtoIPv6, ipv6Inner, Option{Class: 2, Type: 0x81, Data: []byte{9}}), uint64(0), uint64(0), uint32(0), []byte{})
	f.Add([]byte{0x3f, 0, 8, 0, 0, 0, 0, 0}, ^uint64(0), uint64(7), uint32(9), []byte{1, 2, 3, 4, 5, 6, 7})
	f.Fuzz(func(t *testing.T, pkt []byte, ep, at uint64, ck uint32, opt []byte) {
		var h Header
		inner, r := Parse(pkt, &h)
		if r == OK {
			if len(h.Raw)+len(inner) != len(pkt) || len(inner) == 0 {
				t.Fatalf("lengths: raw %d inner %d pkt %d", len(h.Raw), len(inner), len(pkt))
			}
		} else if inner != nil {
			t.Fatal("inner returned on drop")
		}
		// Round trip: whatever we build, Parse gives back.
		if len(opt) > MaxOptionDataLen {
			opt = opt[:MaxOptionDataLen]
		}
		inner = ipv4Inner
		proto := uint16(ProtoIPv4)
		if ck&1 == 1 {
			inner, proto = ipv6Inner, ProtoIPv6
		}
		var extra []Option
		if len(opt) > 0 {
			o := Option{Class: binary.BigEndian.Uint16(append(opt, 0, 0)[:2]), Type: opt[0] &^ typeCritical, Data: opt}
			if o.Class == ClassAWS {
				o.Class++ // a second, differently sized AWS option is not a valid build
			}
			extra = append(extra, o)
		}
		vni := uint32(ep) & 0xffffff
		b := AppendHeader(nil, vni, proto, ep, at, ck, extra...)
		hlen := len(b)
		b = append(b, inner...)
		got, r := Parse(b, &h)
		if r != OK {
			t.Fatalf("round trip: %v", r)
		}
		if h.EndpointID != ep || h.AttachmentID != at || h.Cookie != ck || h.VNI != vni || h.Protocol != proto {
			t.Fatalf("round trip header %+v", h)
		}
		if len(h.Raw) != hlen || !bytes.Equal(got, inner) {
			t.Fatalf("round trip lengths")
		}
	})
}

func BenchmarkParse(b *testing.B) {
	pkt := build(ProtoIPv4, append(ipv4Inner, make([]byte, 44)...), Option{Class: 2, Type: 1, Data: []byte{1, 2, 3, 4}})
	var h Header
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if _, r := Parse(pkt, &h); r != OK {
			b.Fatal(r)
		}
	}
}

func BenchmarkAppendHeader(b *testing.B) {
	buf := make([]byte, 0, MaxHeaderLen)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendHeader(buf[:0], 0, ProtoIPv4, 1, 2, 3)
	}
}
