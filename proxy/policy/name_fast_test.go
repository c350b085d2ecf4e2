package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// The allocation-free helpers of NormalizeName must agree with the plain
// forms they replace.
func TestNameFastPathsAgree(t *testing.T) {
	long := strings.Repeat("a", 63)
	cases := []string{"", ".", "a", "a.", ".a", "a..b", "a.b", long, long + "a", "x." + long, "x." + long + "a.y",
		"1.2.3.4", "01.2.3.4", "::1", "fe80::1%eth0", "[::1]", "::ffff:10.0.0.1", "1host.test", "host.test", "h:1",
		"9", "a1.2.3.4", "-.-", "1.2.3.4.5", "0x7f.1"}
	for _, s := range cases {
		split := true
		for _, l := range strings.Split(s, ".") {
			if l == "" || len(l) > 63 {
				split = false
			}
		}
		if got := labelsOK(s); got != split {
			t.Errorf("labelsOK(%q) = %v, split says %v", s, got, split)
		}
		if _, err := netip.ParseAddr(s); err == nil && !mayBeIP(s) {
			t.Errorf("mayBeIP(%q) false for a valid address", s)
		}
	}
}

func TestNormalizeNameNoAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { NormalizeName("www.example.test") }); n != 0 {
		t.Errorf("NormalizeName of a lower-case name: %v allocs, want 0", n)
	}
}
