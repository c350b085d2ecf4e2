//go:build linux

package caps

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestCheckNamesEveryMissing(t *testing.T) {
	have := Set(1 << NetRaw)
	err := Check(have, []Need{{NetAdmin, "tun"}, {NetRaw, "raw"}, {NetBindService, "port 80"}})
	var me *MissingError
	if !errors.As(err, &me) || len(me.Missing) != 2 {
		t.Fatalf("err %v, want the two missing", err)
	}
	if s := err.Error(); !strings.Contains(s, "CAP_NET_ADMIN (tun)") || !strings.Contains(s, "CAP_NET_BIND_SERVICE (port 80)") || strings.Contains(s, "CAP_NET_RAW") {
		t.Fatalf("message %q", s)
	}
	if err := Check(have, []Need{{NetRaw, "raw"}}); err != nil {
		t.Fatal(err)
	}
}

// Effective agrees with the kernel's view in /proc/self/status.
func TestEffective(t *testing.T) {
	got, err := Effective()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			var want uint64
			for _, c := range strings.TrimSpace(v) {
				want = want<<4 | uint64(strings.IndexRune("0123456789abcdef", c))
			}
			if uint64(got) != want {
				t.Fatalf("Effective %x, /proc says %x", uint64(got), want)
			}
			if os.Geteuid() == 0 && !got.Has(NetAdmin) {
				t.Error("root without CAP_NET_ADMIN?")
			}
			return
		}
	}
	t.Skip("no CapEff in /proc/self/status")
}
