package config

import (
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// issue 15: an unset steer.network_policy.default_action follows the proxy
// policy's default; an explicit one wins.
func TestNetworkPolicyDefaultFollowsProxy(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"", steer.NetDeny}, // proxy default is deny
		{"proxy:\n  policy:\n    default_action: allow\n", steer.NetAllow},
		{"proxy:\n  policy:\n    default_action: splice\n", steer.NetAllow},
		{"proxy:\n  policy:\n    default_action: allow\nsteer:\n  network_policy:\n    default_action: deny\n", steer.NetDeny},
		{"steer:\n  network_policy:\n    default_action: allow\n", steer.NetAllow},
	} {
		cfg, err := Parse([]byte(c.yaml))
		if err != nil {
			t.Fatalf("%q: %v", c.yaml, err)
		}
		if got := cfg.SteerConfig().NetworkPolicy.DefaultAction; got != c.want {
			t.Errorf("%q: default_action %q, want %q", c.yaml, got, c.want)
		}
	}
}

func TestNetworkPolicyParse(t *testing.T) {
	y := `steer:
  network_policy:
    rules:
      - name: ssh
        action: allow
        protocol: tcp
        ports: ["22", "2200-2299"]
        endpoints: [vpce-0123456789abcdef0]
        destinations: [203.0.113.0/24]
`
	cfg, err := Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Steer.NetworkPolicy.Rules[0]
	if r.Name != "ssh" || len(r.Ports) != 2 || r.Ports[1].Hi != 2299 {
		t.Fatalf("got %+v", r)
	}
	_, err = Parse([]byte("steer:\n  network_policy:\n    rules:\n      - name: x\n        action: allow\n        ports: [22]\n"))
	if err == nil || !strings.Contains(err.Error(), "steer.network_policy.rules[0].ports: needs protocol") {
		t.Fatalf("got %v", err)
	}
}
