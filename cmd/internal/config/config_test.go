package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestDefaultsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Health.Listen != ":80" || c2.Drain.Deadline != 60*time.Second {
		t.Fatalf("defaults not applied: %+v", c2)
	}
}

func TestParseOverridesDefaults(t *testing.T) {
	c, err := Parse([]byte("log:\n  level: debug\nhealth:\n  mode: simple\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Log.Level != "debug" || c.Log.Format != "text" || c.Health.Mode != "simple" || c.Health.Listen != ":80" {
		t.Fatalf("got %+v", c)
	}
}

// Every error is one line that names the field.
func TestErrorsNameTheField(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"bogus: 1\n", "bogus (line 1): unknown key"},
		{"log:\n  levle: info\n", "log.levle (line 2): unknown key"},
		{"log:\n  Level: info\n", `did you mean "level"`},
		{"log:\n  level: loud\n", `log.level: "loud" is not one of`},
		{"health:\n  listen: \":99999\"\n", "health.listen: \":99999\": port out of range"},
		{"health:\n  listen: [1]\n", "health.listen (line 2): expected a single value"},
		{"drain:\n  deadline: soon\n", `drain.deadline (line 2): cannot use "soon" as a duration`},
		{"log: 3\n", "log (line 1): expected a mapping"},
		{"log:\n  level: info\n  level: debug\n", "log.level (line 3): duplicate key"},
		{"log: [\n", "yaml:"},
		// issue 19: decryption mirror keys.
		{"proxy:\n  mirror:\n    enabled: true\n    mtu: 100\n", "proxy.mirror.mtu: 100 out of range"},
		{"proxy:\n  mirror:\n    enabled: true\n    interface: \"\"\n", "proxy.mirror.interface:"},
		{"proxy:\n  mirror:\n    enable: true\n", "proxy.mirror.enable (line 3): unknown key"},
		{"proxy:\n  mirror:\n    queue_packets: 0\n", "proxy.mirror.queue_packets: 0 out of range"},
		{"logship:\n  ids_alerts:\n    poll: 1ms\n", "logship.ids_alerts.poll: 1ms out of range"},
	}
	for _, tc := range cases {
		_, err := Parse([]byte(tc.yaml))
		if err == nil {
			t.Errorf("%q: no error", tc.yaml)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: got %q, want one line containing %q", tc.yaml, err, tc.want)
		}
	}
}

func TestStrictTypes(t *testing.T) {
	type inner struct {
		Port   uint16         `yaml:"port"`
		CIDRs  []netip.Prefix `yaml:"cidrs"`
		Addr   netip.Addr     `yaml:"addr"`
		Enable bool           `yaml:"enable"`
		Tags   map[string]int `yaml:"tags"`
	}
	type top struct {
		In inner `yaml:"in"`
	}
	var v top
	err := decodeStrict([]byte("in:\n  port: 8080\n  cidrs: [10.0.0.0/8, 2001:db8::/32]\n  addr: 198.18.0.1\n  enable: true\n  tags: {a: 1}\n"), &v)
	if err != nil {
		t.Fatal(err)
	}
	if v.In.Port != 8080 || len(v.In.CIDRs) != 2 || v.In.CIDRs[1].Bits() != 32 || v.In.Addr != netip.MustParseAddr("198.18.0.1") || !v.In.Enable || v.In.Tags["a"] != 1 {
		t.Fatalf("got %+v", v)
	}
	for in, want := range map[string]string{
		"in:\n  port: 70000\n":          "in.port (line 2): 70000 is out of range for an integer 0..65535",
		"in:\n  cidrs: [10.0.0.0/33]\n": "in.cidrs[0] (line 2):",
		"in:\n  addr: 1.2.3\n":          "in.addr (line 2):",
		"in:\n  enable: maybe\n":        `in.enable (line 2): cannot use "maybe" as true or false`,
		"in:\n  tags: {a: x}\n":         `in.tags.a (line 2): cannot use "x"`,
		"in:\n  cidrs: 10.0.0.0/8\n":    "in.cidrs (line 2): expected a list",
	} {
		var v top
		err := decodeStrict([]byte(in), &v)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: got %v, want prefix %q", in, err, want)
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	c := Default()
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(out)
	if err != nil {
		t.Fatalf("effective config does not parse back: %v\n%s", err, out)
	}
	out2, _ := c2.Marshal()
	if string(out) != string(out2) {
		t.Fatalf("not stable:\n%s\n---\n%s", out, out2)
	}
}

// issue 14: proxy.binding keys (the resolver's keys inline).
func TestBindingKeys(t *testing.T) {
	c, err := Parse([]byte("proxy:\n  binding:\n    mode: report_only\n    servers: [198.18.0.53, \"[2001:db8::53]:5353\"]\n    retain: 1m\n    min_ttl: 1s\n  policy:\n    rules:\n      - name: corp\n        action: allow\n        domains: [svc.corp.internal]\n        bind: none\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Proxy.Binding
	if b.Mode != "report_only" || len(b.Resolver.Servers) != 2 || b.Resolver.Retain != time.Minute || b.Resolver.MinTTL != time.Second || b.Resolver.Timeout != 2*time.Second {
		t.Fatalf("binding %+v", b)
	}
	if c.Proxy.Policy.Rules[0].Bind != "none" {
		t.Fatalf("rule bind %q", c.Proxy.Policy.Rules[0].Bind)
	}
	d := Default()
	if d.Proxy.Binding.Mode != "enforce" {
		t.Fatalf("binding default %q", d.Proxy.Binding.Mode)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"proxy:\n  binding:\n    mode: maybe\n", `proxy.binding.mode: "maybe" is not enforce`},
		{"proxy:\n  binding:\n    servers: [dns.example]\n", "proxy.binding.servers[0]"},
		{"proxy:\n  binding:\n    timeout: 0s\n", "proxy.binding.timeout"},
		{"proxy:\n  binding:\n    min_ttl: 2h\n", "proxy.binding.min_ttl"},
		{"proxy:\n  binding:\n    retian: 1m\n", "proxy.binding.retian (line 3): unknown key"},
		{"proxy:\n  policy:\n    rules:\n      - name: x\n        action: allow\n        bind: off\n", "proxy.policy.rules[0].bind"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
