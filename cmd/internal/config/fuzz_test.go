package config

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// FuzzParse: no input crashes the decoder; a rejected config gets one
// line of error; an accepted one survives Marshal and Parse unchanged (what
// `gwlbproxy check` prints is itself a valid config meaning the same).
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../../../configs/gwlbproxy.yaml"); err == nil {
		f.Add(b)
	}
	for _, s := range []string{
		"",
		"tunnel:\n  mtu: 70000\n",
		"tunnel:\n  allowed_sources: [10.0.0.0/33]\n",
		"steer:\n  egress_mode: tunnel\n  http_ports: [80, 8080]\n",
		"proxy:\n  policy:\n    rules:\n      - name: a\n        action: deny\n        domains: [\"*.example.com\"]\n",
		"log: {level: debug, format: json}\n",
		"tunnel: [1, 2]\n",
		"unknown_key: 1\n",
		"a: &x [*x]\n",
		"tunnel:\n  idle_timeout: 5m\n  mtu: !!str 9000\n",
		// issue 17: the aws section and its deprecated aliases.
		"aws:\n  region: eu-west-1\n  endpoints:\n    logs: http://198.18.0.1:4566\n",
		"steer:\n  imds_endpoint: http://198.18.0.9\nlifecycle:\n  imds_endpoint: http://198.18.0.9\n",
		"proxy:\n  policy: &p\n    source: s3\n    s3: {bucket: b, key: k}\n    endpoint: http://x\nlifecycle: *p\n",
		"logship:\n  cloudwatch:\n    endpoint: [http://x]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if msg := err.Error(); msg == "" || strings.Contains(strings.TrimRight(msg, "\n"), "\n") {
				t.Fatalf("error is not one line: %q", msg)
			}
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("marshal an accepted config: %v", err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("the printed config is rejected: %v\n%s", err, out)
		}
		out2, err := c2.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the config:\n%s\n---\n%s", out, out2)
		}
	})
}
