//go:build linux

package steer

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// otherNFT is someone else's nftables connection in the appliance
// namespace (an operator, a config-management run).
func otherNFT(t *testing.T, n *nsh) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(n.h)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// intercepted asserts a connection from tunnel x to port 443 is answered
// by the proxy and attributed to its endpoint.
func (tp *topo) intercepted(x string) error {
	tn := tp.tun[x]
	dst := netip.AddrPortFrom(serverAddr, 443)
	line, local, err := request(tp.t, tn.cli, dst)
	if err != nil {
		return err
	}
	if want := fmt.Sprintf("proxy dst=%s ep=%x ok=true client=%s", dst, tn.endpointID, local); line != want {
		return fmt.Errorf("got %q, want %q", line, want)
	}
	return nil
}

// TestSelfRepair: steering taken away from outside is put back by the
// periodic check (sysctl_interval 1s here, nobody calls Health), counted,
// and interception works again, with the elements of the live tunnel.
func TestSelfRepair(t *testing.T) {
	for _, mode := range []string{EgressNAT, EgressTunnel} {
		t.Run(mode, func(t *testing.T) {
			cfg := natConfig()
			cfg.EgressMode = mode
			tp := newTopo(t, cfg, "a")
			tp.startProxy(false)
			tn := tp.tun["a"]
			if err := tp.intercepted("a"); err != nil {
				t.Fatalf("before: %v", err)
			}
			table := &nftables.Table{Name: cfg.TableName, Family: nftables.TableFamilyINet}
			nftRepairs := func() uint64 { return tp.s.Stats().NFTRepairs }
			routingRepairs := func() uint64 { return tp.s.Stats().RoutingRepairs }
			for _, c := range []struct {
				name    string
				repairs func() uint64
				breakIt func(*testing.T)
			}{
				{"nft flush ruleset", nftRepairs, func(t *testing.T) {
					c := otherNFT(t, tp.app)
					c.FlushRuleset()
					if err := c.Flush(); err != nil {
						t.Fatal(err)
					}
				}},
				{"flush chain " + chainTProxyPre, nftRepairs, func(t *testing.T) {
					c := otherNFT(t, tp.app)
					c.FlushChain(&nftables.Chain{Name: chainTProxyPre, Table: table})
					if err := c.Flush(); err != nil {
						t.Fatal(err)
					}
				}},
				// A regular chain (the tunnel rules behind the base
				// chain's goto) is checked like a base chain.
				{"flush chain " + chainTProxyTun, nftRepairs, func(t *testing.T) {
					c := otherNFT(t, tp.app)
					c.FlushChain(&nftables.Chain{Name: chainTProxyTun, Table: table})
					if err := c.Flush(); err != nil {
						t.Fatal(err)
					}
				}},
				{"tunnel element deleted", nftRepairs, func(t *testing.T) {
					c := otherNFT(t, tp.app)
					set, err := c.GetSetByName(table, setTunnels)
					if err != nil {
						t.Fatal(err)
					}
					if err := c.SetDeleteElements(set, []nftables.SetElement{{Key: elemIfIndex(tn.pair.InIndex)}}); err != nil {
						t.Fatal(err)
					}
					if err := c.Flush(); err != nil {
						t.Fatal(err)
					}
				}},
				{"ip rules and routes deleted", routingRepairs, func(t *testing.T) {
					rules, routes := tp.s.baseRoutes()
					prules, proutes := tp.s.pairRoutes(tn.pair)
					for _, r := range append(rules, prules...) {
						if err := tp.app.nl.RuleDel(r); err != nil {
							t.Fatalf("rule del: %v", err)
						}
					}
					for _, r := range append(routes, proutes...) {
						if err := tp.app.nl.RouteDel(r); err != nil {
							t.Fatalf("route del %v: %v", r, err)
						}
					}
				}},
			} {
				before := c.repairs()
				c.breakIt(t)
				waitFor(t, c.name+" repaired", func() bool { return c.repairs() > before })
				if err := tp.intercepted("a"); err != nil {
					t.Fatalf("after %s: %v", c.name, err)
				}
				if err := tp.s.Health(); err != nil {
					t.Fatalf("after %s: Health %v", c.name, err)
				}
				t.Logf("%s: repaired; stats %+v", c.name, tp.s.Stats())
			}
			st := tp.s.Stats()
			if st.NFTRepairs != 4 || st.RoutingRepairs != 1 || st.RepairFailures != 0 {
				t.Fatalf("repairs: nft %d routing %d failures %d, want 4 1 0", st.NFTRepairs, st.RoutingRepairs, st.RepairFailures)
			}
		})
	}
}

// TestHealthRedUntilRepaired: with a check interval far away, Health itself
// finds the deleted table (red at once, naming it) and has it repaired
// without waiting for the interval; a later Health is green and traffic
// flows. A rule someone else added to our table counts as a change too.
func TestHealthRedUntilRepaired(t *testing.T) {
	cfg := natConfig()
	cfg.SysctlInterval = time.Hour
	tp := newTopo(t, cfg, "a", "b")
	tp.startProxy(false)
	if err := tp.s.Health(); err != nil {
		t.Fatalf("healthy before: %v", err)
	}
	c := otherNFT(t, tp.app)
	c.DelTable(&nftables.Table{Name: cfg.TableName, Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	err := tp.s.Health()
	if err == nil || !strings.Contains(err.Error(), "table inet "+cfg.TableName+" missing") {
		t.Fatalf("Health with the table gone: %v", err)
	}
	t.Logf("table gone: %v", err)
	waitFor(t, "Health green again", func() bool { return tp.s.Health() == nil })
	for _, x := range []string{"a", "b"} {
		if err := tp.intercepted(x); err != nil {
			t.Fatalf("tunnel %s after repair: %v", x, err)
		}
	}
	if st := tp.s.Stats(); st.NFTRepairs != 1 {
		t.Fatalf("nft repairs %d, want 1", st.NFTRepairs)
	}

	// A rule removed from a pair's ip rules only.
	prules, _ := tp.s.pairRoutes(tp.tun["b"].pair)
	if err := tp.app.nl.RuleDel(prules[0]); err != nil {
		t.Fatal(err)
	}
	if err := tp.s.Health(); err == nil || !strings.Contains(err.Error(), "rule priority 101 table 20002 missing") {
		t.Fatalf("Health with a rule gone: %v", err)
	}
	waitFor(t, "rule back", func() bool { return tp.s.Health() == nil })
	rules, err := tp.app.nl.RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range rules {
		if r.Priority == prules[0].Priority && r.Mark == prules[0].Mark {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d copies of the repaired rule, want 1", n)
	}
	if err := tp.intercepted("b"); err != nil {
		t.Fatalf("tunnel b after the rule repair: %v", err)
	}
}
