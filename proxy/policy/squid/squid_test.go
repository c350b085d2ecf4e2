package squid

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

func translateFile(t *testing.T, name string) (Result, *policy.Policy) {
	t.Helper()
	f, err := os.Open("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := Translate(f)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(res.Policy)
	if err != nil {
		t.Fatalf("translated policy does not validate: %v", err)
	}
	return res, pol
}

func notes(res Result) string {
	var sb strings.Builder
	for _, n := range res.Notes {
		sb.WriteString(n.String() + "\n")
	}
	return sb.String()
}

type probe struct {
	client, dst, name string
	want              policy.Action
	rule              string // prefix
}

func check(t *testing.T, pol *policy.Policy, probes []probe) {
	t.Helper()
	for _, p := range probes {
		in := policy.Input{Client: netip.MustParseAddr(p.client), Dst: netip.MustParseAddrPort(p.dst), Name: p.name}
		d := pol.Decide(in)
		if d.Action != p.want || !strings.HasPrefix(d.Rule, p.rule) {
			t.Errorf("%+v: got %s by %s", p, d.Action, d.Rule)
		}
	}
}

func TestDebianDefault(t *testing.T) {
	res, pol := translateFile(t, "debian-12-default.conf")
	n := notes(res)
	for _, w := range []string{
		"http_access deny CONNECT !SSL_ports (CONNECT: a transparent proxy sees no CONNECT",
		"http_access allow localhost manager (cache manager",
		"http_access deny manager (cache manager",
		"not translated: include /etc/squid/conf.d/*.conf",
		"not policy, not translated: http_port 3128",
		"not policy, not translated: refresh_pattern",
		"no ssl_bump: Squid passes TLS through",
	} {
		if !strings.Contains(n, w) {
			t.Errorf("notes lack %q:\n%s", w, n)
		}
	}
	// deny !Safe_ports, allow localhost, deny all.
	if res.Translated != 3 || len(res.Policy.Rules) != 2 || res.Policy.DefaultAction != policy.Deny {
		t.Fatalf("translated %d, rules %+v, default %s", res.Translated, res.Policy.Rules, res.Policy.DefaultAction)
	}
	check(t, pol, []probe{
		{"127.0.0.1", "203.0.113.5:443", "a.example", policy.Splice, "http_access-L"},
		{"127.0.0.1", "203.0.113.5:25", "a.example", policy.Deny, "http_access-L"}, // not a Safe_port
		{"127.0.0.1", "203.0.113.5:1025", "", policy.Splice, "http_access-L"},      // 1025-65535 is safe
		{"127.0.0.1", "203.0.113.5:777", "", policy.Splice, "http_access-L"},
		{"10.0.0.5", "203.0.113.5:443", "a.example", policy.Deny, "default"}, // localnet is not allowed by default
	})
}

func TestWikiBumpExceptBanks(t *testing.T) {
	res, pol := translateFile(t, "wiki-bump-except-banks.conf")
	n := notes(res)
	if !strings.Contains(n, "ssl_bump peek step1: nothing to translate") {
		t.Errorf("notes:\n%s", n)
	}
	check(t, pol, []probe{
		{"10.1.2.3", "203.0.113.5:443", "www.bank.example", policy.Splice, "http_access-L13-allow-L11-splice"},
		{"10.1.2.3", "203.0.113.5:443", "bank.example", policy.Splice, "http_access-L13-allow-L11-splice"},
		{"172.16.0.9", "203.0.113.5:443", "x.pay.example", policy.Splice, "http_access-L13-allow-L11-splice"},
		{"10.1.2.3", "203.0.113.5:443", "news.example", policy.Allow, "http_access-L13-allow"},
		{"192.168.1.1", "203.0.113.5:443", "www.bank.example", policy.Deny, "default"}, // http_access still gates splices
	})
}

func TestWikiPeekSpliceTerminate(t *testing.T) {
	res, pol := translateFile(t, "wiki-peek-splice-terminate.conf")
	n := notes(res)
	for _, w := range []string{"ssl_bump splice step3 nobumpSites: at_step dropped", "ssl_bump stare step2: nothing to translate"} {
		if !strings.Contains(n, w) {
			t.Errorf("notes lack %q:\n%s", w, n)
		}
	}
	check(t, pol, []probe{
		{"198.18.4.4", "203.0.113.5:443", "social.example", policy.Deny, "http_access-L21-allow-L14-terminate"},
		{"198.18.4.4", "203.0.113.5:443", "x.games.example", policy.Deny, "http_access-L21-allow-L14-terminate"},
		{"198.18.4.4", "203.0.113.5:443", "www.example.com", policy.Splice, "http_access-L21-allow-L16-splice"},
		{"198.18.4.4", "203.0.113.5:443", "news.example", policy.Allow, "http_access-L21-allow"},
		{"198.18.4.4", "203.0.113.5:22", "news.example", policy.Deny, "http_access-L19-deny"}, // !Safe_ports
		{"198.18.4.4", "198.19.0.1:443", "news.example", policy.Deny, "http_access-L20-deny"}, // internal dst
		{"198.20.0.1", "203.0.113.5:443", "news.example", policy.Deny, "default"},
	})
}

func TestMixed(t *testing.T) {
	res, pol := translateFile(t, "mixed.conf")
	n := notes(res)
	for _, w := range []string{
		"line 6: not translated: acl ads dstdom_regex: regular expressions are not translated",
		"line 8: not translated: http_access deny ads (acl ads: regular expressions",
		`line 13: not translated: http_access allow all comes after "http_access deny all" (unreachable)`,
	} {
		if !strings.Contains(n, w) {
			t.Errorf("notes lack %q:\n%s", w, n)
		}
	}
	check(t, pol, []probe{
		{"10.3.0.1", "203.0.113.5:443", "www.partner.example", policy.Deny, "http_access-L9-deny"}, // !staff
		{"10.2.0.1", "203.0.113.5:443", "api.vendor.example", policy.Splice, "http_access-L10-allow"},
		{"10.1.9.9", "203.0.113.5:8085", "partner.example", policy.Splice, "http_access-L10-allow"},
		{"10.1.9.9", "203.0.113.5:22", "partner.example", policy.Deny, "default"},
		{"10.1.9.9", "203.0.113.5:443", "other.example", policy.Deny, "default"},
	})
}

func TestNothingTranslatable(t *testing.T) {
	res, _ := translateFile(t, "untranslatable.conf")
	if res.Translated != 0 {
		t.Fatalf("translated %d: %+v", res.Translated, res.Policy.Rules)
	}
	n := notes(res)
	for _, w := range []string{"line 3: not translated: acl ads dstdom_regex", "line 4: not translated: acl listed dstdomain: values read from file",
		"line 5: not translated: acl post method", "line 6: not translated: acl work time", "line 7:", "line 8:", "line 9:", "line 10:"} {
		if !strings.Contains(n, w) {
			t.Errorf("notes lack %q:\n%s", w, n)
		}
	}
	if res.Policy.DefaultAction != policy.Deny {
		t.Fatalf("default %s", res.Policy.DefaultAction)
	}
}

func TestRangesAndComplements(t *testing.T) {
	ps, err := parseAddrs("0.0.0.1-0.255.255.255")
	if err != nil || len(ps) != 24 || ps[0].String() != "0.0.0.1/32" || ps[23].String() != "0.128.0.0/9" {
		t.Fatalf("%v %v", ps, err)
	}
	if ps, err := parseAddrs("10.0.0.0/255.255.0.0"); err != nil || ps[0].String() != "10.0.0.0/16" {
		t.Fatalf("%v %v", ps, err)
	}
	for _, bad := range []string{"10.0.0.0/255.0.255.0", "host.example", "10.0.0.9-10.0.0.1", "1.2.3.4-::1"} {
		if _, err := parseAddrs(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	c := complementPrefixes([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	for _, a := range []string{"9.255.255.255", "11.0.0.0", "0.0.0.0", "255.255.255.255", "::1"} {
		if !contains(c, a) {
			t.Errorf("complement lacks %s", a)
		}
	}
	if contains(c, "10.1.2.3") {
		t.Error("complement has 10.1.2.3")
	}
	if got := complementPorts([]policy.PortRange{{Lo: 1, Hi: 65535}}); len(got) != 0 {
		t.Errorf("complement of all ports: %v", got)
	}
}

func contains(ps []netip.Prefix, a string) bool {
	ad := netip.MustParseAddr(a)
	for _, p := range ps {
		if p.Contains(ad) {
			return true
		}
	}
	return false
}

// FuzzTranslate: any input translates without panicking into a policy
// that validates.
func FuzzTranslate(f *testing.F) {
	for _, name := range []string{"debian-12-default.conf", "mixed.conf", "wiki-peek-splice-terminate.conf"} {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("acl a src ::-ffff::\nacl b port 0\nhttp_access allow !a !b\n")
	f.Fuzz(func(t *testing.T, s string) {
		res, err := Translate(strings.NewReader(s))
		if err != nil {
			return
		}
		if _, err := policy.New(res.Policy); err != nil {
			t.Fatalf("invalid policy from %q: %v", s, err)
		}
	})
}
