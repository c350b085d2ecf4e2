//go:build linux

package fastpath

import (
	"math/rand/v2"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

// TestIngressAgreesWithParser feeds the ingress program thousands of
// mutated GENEVE packets and checks it never disagrees with tunnel/geneve,
// the reference: when the parser accepts, the program forwards or passes
// up (never drops); when the program drops, it is for the parser's reason.
// Passing up what the parser would drop is allowed: userspace drops it.
func TestIngressAgreesWithParser(t *testing.T) {
	f := withTunnel(t)
	rng := rand.New(rand.NewPCG(20, 2026))
	inners := [][]byte{
		ip4(client, server, 17, 0x4000, l4(40000, 53)),
		ip4(client, server, 6, 0, l4(40001, 443)),
		ip6(client6, server6, 17, l4(40002, 53)),
		ip4(client, server, 1, 0, []byte{8, 0, 0, 0, 0, 7, 0, 1}),
	}
	extras := [][]geneve.Option{
		nil,
		{{Class: 0x0109, Type: 1, Data: []byte{1, 2, 3, 4}}},
		{{Class: 0xffff, Type: 0x7f, Data: make([]byte, 28)}},
	}
	var redirected, passed, dropped int
	for i := 0; i < 3000; i++ {
		inner := inners[rng.IntN(len(inners))]
		proto := uint16(geneve.ProtoIPv4)
		if inner[0]>>4 == 6 {
			proto = geneve.ProtoIPv6
		}
		g := genevePkt(proto, rng.Uint32(), inner, extras[rng.IntN(len(extras))]...)
		hdrLen := len(g) - len(inner)
		// Flip 1..3 random bytes of the header (and sometimes the first
		// inner byte), or cut the packet short.
		for n := rng.IntN(3) + 1; n > 0; n-- {
			j := rng.IntN(hdrLen + 1)
			g[j] ^= byte(rng.IntN(255) + 1)
		}
		if rng.IntN(8) == 0 {
			g = g[:rng.IntN(len(g)+1)]
		}
		var h geneve.Header
		_, want := geneve.Parse(g, &h)
		var ret uint32
		u := underlays[i%len(underlays)]
		d := reasonDelta(t, f, func() { ret, _ = runIn(t, f, u.frame(u.gwlb, 10000, 6081, g)) })
		switch ret {
		case actRedirect:
			redirected++
			if want != geneve.OK {
				t.Fatalf("case %d: program forwarded what the parser rejects (%v): %x", i, want, g)
			}
		case actOK:
			passed++
		case actShot:
			dropped++
			if want == geneve.OK || d[want] != 1 {
				t.Fatalf("case %d: program dropped (counters %v), parser says %v: %x", i, d, want, g)
			}
		default:
			t.Fatalf("case %d: verdict %d", i, ret)
		}
	}
	t.Logf("redirected %d, passed up %d, dropped %d", redirected, passed, dropped)
	if redirected == 0 || dropped == 0 {
		t.Fatal("the mutations exercised too little")
	}
}
