//go:build linux

package fastpath

import (
	"os"
	"testing"
)

// needBPF skips when the test cannot load BPF programs.
func needBPF(t *testing.T) *Fastpath {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("fastpath: BPF tests need root (CAP_BPF, CAP_NET_ADMIN)")
	}
	f, err := Load(testConfig())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestLoad(t *testing.T) {
	needBPF(t)
}
