//go:build linux

package nsexec

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) {
	if os.Getenv("NSEXEC_TEST_CHILD") == "1" {
		if err := Enter(); err != nil {
			fmt.Println("enter:", err)
			os.Exit(3)
		}
		ifs, _ := net.Interfaces()
		for _, i := range ifs {
			fmt.Println(i.Name)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestCommandRunsInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "nsx-" + hex.EncodeToString(b)
	link := "dmy" + hex.EncodeToString(b)

	ns, err := inns.New(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	if err := ns.Netlink().LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: link}, PeerName: link + "p"}); err != nil {
		t.Fatal(err)
	}

	cmd := Command(name, os.Args[0], "-test.run=^$")
	cmd.Env = append(cmd.Env, "NSEXEC_TEST_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	got := strings.Fields(string(out))
	if len(got) != 3 || !strings.Contains(string(out), link) || !strings.Contains(string(out), "lo") {
		t.Fatalf("child saw interfaces %q, want only lo and the veth pair %s", got, link)
	}
}
