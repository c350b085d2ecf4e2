package offload

import (
	"testing"

	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
)

// BenchmarkCoalesce merges a batch of 64 packets: 64 flows of one packet
// each (nothing to merge, the bench's worst case), or 8 flows of 8.
func BenchmarkCoalesce(b *testing.B) {
	for _, tc := range []struct {
		name        string
		flows, size int
		tcp         bool
	}{
		{"udp/64flows/64B", 64, 64, false},
		{"udp/8flows/64B", 8, 64, false},
		{"udp/8flows/8472B", 8, 8472, false},
		{"tcp/8flows/1448B", 8, 1448, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			per := 64 / tc.flows
			var orig [][]byte
			for i := 0; i < per; i++ {
				for f := 0; f < tc.flows; f++ {
					var s [][]byte
					if tc.tcp {
						s = tcpStream(false, per, tc.size, tc.size, tcpACK)
						src, dst := v4pair(uint16(2000+f), 443)
						p := s[i]
						_ = src
						_ = dst
						p[20], p[21] = byte((2000+f)>>8), byte(2000+f) // distinct flows (checksum fixed below)
						fixTCP(p)
						orig = append(orig, p)
					} else {
						orig = append(orig, udpStream(false, per, tc.size, tc.size, uint16(2000+f))[i])
					}
				}
			}
			pkts := make([][]byte, len(orig))
			bufs := make([][]byte, len(orig))
			for i := range orig {
				bufs[i] = make([]byte, len(orig[i]))
			}
			c := NewCoalescer(64, true)
			var parts [][]byte
			b.ReportAllocs()
			b.SetBytes(int64(len(orig) * tc.size))
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				for i := range orig {
					copy(bufs[i], orig[i])
					pkts[i] = bufs[i]
				}
				for _, s := range c.Coalesce(pkts) {
					parts = c.AppendParts(parts[:0], pkts, &s)
				}
			}
			b.ReportMetric(float64(len(c.out)), "writes/batch")
		})
	}
}

func fixTCP(p []byte) {
	p[36], p[37] = 0, 0
	c := ^csum.Fold(csum.Sum(p[20:], pseudo(p, false, protoTCP, len(p)-20)))
	p[36], p[37] = byte(c>>8), byte(c)
}

// BenchmarkSplit cuts a 64 KiB-class super-packet into segments.
func BenchmarkSplit(b *testing.B) {
	for _, tc := range []struct {
		name    string
		n, size int
		tcp     bool
	}{
		{"udp/64x64B", 64, 64, false},
		{"udp/7x8472B", 7, 8472, false},
		{"tcp/45x1448B", 45, 1448, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var pk [][]byte
			if tc.tcp {
				pk = tcpStream(false, tc.n, tc.size, tc.size, tcpACK)
			} else {
				pk = udpStream(false, tc.n, tc.size, tc.size, 9)
			}
			c := NewCoalescer(len(pk), true)
			s := c.Coalesce(pk)
			if len(s) != 1 {
				b.Fatalf("%d supers", len(s))
			}
			var whole []byte
			for _, p := range c.AppendParts(nil, pk, &s[0]) {
				whole = append(whole, p...)
			}
			h := s[0].Hdr
			var sp Splitter
			hdr := make([]byte, MaxHeaderLen)
			b.ReportAllocs()
			b.SetBytes(int64(len(whole)))
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				if err := sp.Reset(whole, h, 8500); err != nil {
					b.Fatal(err)
				}
				for {
					if _, _, _, ok := sp.Next(hdr); !ok {
						break
					}
				}
			}
		})
	}
}
