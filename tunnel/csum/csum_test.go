package csum

import (
	"math/rand/v2"
	"testing"
)

// naive is RFC 1071 done 16 bits at a time: the reference Sum is held to.
func naive(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func TestSumMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 300; n++ {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if n%7 == 0 {
			for i := range b {
				b[i] = 0xff
			}
		}
		want := naive(b)
		got := Fold(Sum(b, 0))
		// 0 and 0xffff are both one's complement zero.
		if got != want && !(got^want == 0xffff && (got == 0 || want == 0)) {
			t.Fatalf("len %d: got %#x want %#x", n, got, want)
		}
	}
}

// TestAddSplits: summing two even-length pieces and adding them equals
// summing the whole (how offload sums a payload once for many segments).
func TestAddSplits(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, 1500)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	for cut := 0; cut <= len(b); cut += 2 {
		if got, want := Fold(Add(Sum(b[:cut], 7), Sum(b[cut:], 0))), Fold(Sum(b, 7)); got != want {
			t.Fatalf("cut %d: %#x, want %#x", cut, got, want)
		}
	}
}

// TestIPv4Header: RFC 1071's worked example header verifies to 0xffff.
func TestIPv4Header(t *testing.T) {
	h := []byte{0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0xde, 0xad, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7}
	IPv4Header(h)
	if h[10] != 0xb8 || h[11] != 0x61 {
		t.Fatalf("checksum %#02x%02x, want 0xb861", h[10], h[11])
	}
	if naive(h) != 0xffff {
		t.Fatal("header does not verify")
	}
}

func BenchmarkSum1500(b *testing.B) {
	buf := make([]byte, 1500)
	for i := range buf {
		buf[i] = byte(i)
	}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	var s uint64
	for b.Loop() {
		s = Sum(buf, s)
	}
	_ = Fold(s)
}
