package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"github.com/gwlbproxy/gwlbproxy/proxy/schema"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func sampleRecord() Record {
	return Record{
		Time: time.Date(2026, 11, 24, 10, 0, 0, 123456789, time.UTC), RecordID: "0123456789abcdef0123456789abcdef",
		InstanceID: "i-0abc", EndpointID: "vpce-00123456789abcdef", ClientIP: "10.0.0.5", ClientPort: 51000,
		DstIP: "203.0.113.10", DstPort: 443, SNI: "good.test", Host: "good.test", Method: "GET", Scheme: "https",
		Path: "/a/b?redacted", Status: 200, Action: "allow", Rule: "allow-test", BytesIn: 10, BytesOut: 12345,
		DurationMS: 1.25, TLSVersion: "TLSv1.3", ALPN: "http/1.1", UserAgent: "curl/8.5",
	}
}

func TestRecordJSONShape(t *testing.T) {
	r := sampleRecord()
	b := r.AppendJSON(nil, 2048)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	want := []string{"time", "record_id", "instance_id", "endpoint_id", "client_ip", "client_port", "dst_ip", "dst_port", "sni", "host",
		"method", "scheme", "path", "status", "action", "rule", "bytes_in", "bytes_out", "duration_ms", "tls_version", "alpn",
		"upstream_error", "user_agent", "bind", "bind_name", "bind_answers", "stalled", "policy_version", "ja4", "ja3"}
	if len(m) != len(want) {
		t.Fatalf("fields %v", m)
	}
	for _, k := range want {
		if _, ok := m[k]; !ok {
			t.Errorf("missing %s", k)
		}
	}
	if m["status"] != float64(200) || m["dst_port"] != float64(443) || m["duration_ms"] != 1.25 || m["time"] != "2026-11-24T10:00:00.123456789Z" {
		t.Fatalf("%s", b)
	}
}

func TestRecordInjection(t *testing.T) {
	r := sampleRecord()
	r.Host = "evil.test\r\n{\"action\":\"allow\"}"
	r.UserAgent = "\x1b[31mred\x1b[0m\x00\x7f\u0085\u2028\u2029\"\\"
	r.Path = "/\xff\xfe"
	b := r.AppendJSON(nil, 2048)
	if !json.Valid(b) {
		t.Fatalf("invalid JSON: %s", b)
	}
	for _, c := range b {
		if c < 0x20 || c == 0x7f {
			t.Fatalf("raw control byte %#x in %q", c, b)
		}
	}
	if bytes.Contains(b, []byte("\u2028")) || bytes.Contains(b, []byte("\u0085")) {
		t.Fatalf("raw separator in %s", b)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	if m["host"] != "evil.test\r\n{\"action\":\"allow\"}" || m["action"] != "allow" || m["path"] != "/\ufffd\ufffd" {
		t.Fatalf("%v", m)
	}
	if m["user_agent"] != "\x1b[31mred\x1b[0m\x00\x7f\u0085\u2028\u2029\"\\" {
		t.Fatalf("ua %q", m["user_agent"])
	}
}

func TestRecordCap(t *testing.T) {
	r := sampleRecord()
	r.Path = "/" + strings.Repeat("é", 5000)
	b := r.AppendJSON(nil, 100)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	p := m["path"].(string)
	if len(p) > 100+len("…") || !strings.HasSuffix(p, "…") || strings.Contains(p, "\ufffd") {
		t.Fatalf("cap: %d %q", len(p), p)
	}
}

func TestRecordIDsUnique(t *testing.T) {
	g, _ := newRecordIDs()
	g2, _ := newRecordIDs()
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		a, b := g.next(), g2.next()
		for _, id := range []string{string(a[:]), string(b[:])} {
			if seen[id] || len(id) != 32 {
				t.Fatalf("dup or bad id %q", id)
			}
			seen[id] = true
		}
	}
}

// TestRecordMetricsMatchJSON: the typed values logship's EMF counts
// (Record.Metrics) are the record's JSON fields named by proxy/schema.
func TestRecordMetricsMatchJSON(t *testing.T) {
	r := sampleRecord()
	var v map[string]any
	if err := json.Unmarshal(r.AppendJSON(nil, 2048), &v); err != nil {
		t.Fatal(err)
	}
	m := r.Metrics()
	if m.Action == "" || m.Status == 0 || m.DurationMS == 0 {
		t.Fatalf("sample record has empty metric fields: %+v", m)
	}
	if v[schema.KeyAction] != m.Action || v[schema.KeyStatus] != float64(m.Status) || v[schema.KeyDurationMS] != m.DurationMS {
		t.Fatalf("JSON %v, metrics %+v", v, m)
	}
}

func TestJSONLines(t *testing.T) {
	var buf bytes.Buffer
	j := NewJSONLines(&buf)
	r := sampleRecord()
	j.ShipRequest(r.Time, r.AppendJSON(nil, 2048), r.Metrics())
	j.ShipRequest(r.Time, r.AppendJSON(nil, 2048), r.Metrics())
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !json.Valid([]byte(lines[1])) {
		t.Fatalf("%q", buf.String())
	}
}

func BenchmarkRecordEncode(b *testing.B) {
	r := sampleRecord()
	r.UserAgent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36"
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		buf = r.AppendJSON(buf[:0], 2048)
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkShip is the whole per-record path: id, pooled buffer, encode,
// Recorder call.
func BenchmarkShip(b *testing.B) {
	p := &Proxy{cfg: DefaultConfig(), deps: Deps{Recorder: discardRecorder{}}, m: newMetrics(nil, nil)}
	p.ids, _ = newRecordIDs()
	r := sampleRecord()
	start := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		p.ship(&r, start)
	}
}

type discardRecorder struct{}

func (discardRecorder) ShipRequest(time.Time, []byte, schema.Metrics) error { return nil }

// FuzzPeekClientHello feeds arbitrary bytes to the peek: it must never
// panic, never consume more than its cap, and on success return exactly the
// consumed bytes (a prefix of the input).
func FuzzPeekClientHello(f *testing.F) {
	// Seed with real ClientHellos (with and without SNI/ALPN) and junk.
	for _, cfg := range []*tls.Config{
		{ServerName: "good.test", NextProtos: []string{"h2", "http/1.1"}},
		{ServerName: "xn--bcher-kva.example", MaxVersion: tls.VersionTLS12},
		{InsecureSkipVerify: true},
	} {
		f.Add(captureHello(f, cfg))
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10"))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, consumed, err := ReadClientHello(bytes.NewReader(data))
		if len(consumed) > maxHelloBytes || !bytes.HasPrefix(data, consumed) {
			t.Fatalf("consumed %d bytes, not a prefix", len(consumed))
		}
		if err == nil && h == nil {
			t.Fatal("nil hello without error")
		}
	})
}

// captureHello returns the bytes a crypto/tls client sends first.
func captureHello(tb testing.TB, cfg *tls.Config) []byte {
	c1, c2 := net.Pipe()
	go func() {
		tls.Client(c1, cfg).Handshake()
		c1.Close()
	}()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, buf, err := ReadClientHello(c2)
	c2.Close()
	if err != nil || h == nil {
		tb.Fatalf("capture hello: %v", err)
	}
	return buf
}

func TestReadClientHello(t *testing.T) {
	b := captureHello(t, &tls.Config{ServerName: "Good.Test", NextProtos: []string{"h2", "http/1.1"}})
	h, consumed, err := ReadClientHello(io.MultiReader(bytes.NewReader(b), strings.NewReader("trailing")))
	if err != nil || h.ServerName != "Good.Test" || len(h.ALPN) != 2 || h.MaxVersion != tls.VersionTLS13 || h.ECH {
		t.Fatalf("%+v %v", h, err)
	}
	if !bytes.Equal(consumed[:len(b)], b) {
		t.Fatal("consumed bytes differ")
	}
	// Truncated hello: error, no panic.
	if _, _, err := ReadClientHello(bytes.NewReader(b[:len(b)/2])); err == nil {
		t.Fatal("truncated hello accepted")
	}
	if _, _, err := ReadClientHello(strings.NewReader("GET / HTTP/1.0\r\n\r\n")); err == nil || !strings.Contains(err.Error(), "not a TLS") {
		t.Fatalf("plain http: %v", err)
	}
}

// TestCheckDestination: the check the composition root hands to the
// steering dialer is the proxy's SSRF guard, own addresses included.
func TestCheckDestination(t *testing.T) {
	self := netip.MustParseAddr("198.18.7.7")
	p, err := New(DefaultConfig(), Deps{Recorder: &memRecorder{}, SelfAddrs: func() ([]netip.Addr, error) {
		return []netip.Addr{self}, nil
	}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]string{
		"198.18.7.7":      "appliance-address",
		"169.254.169.254": "link-local",
		"::1":             "loopback",
		"203.0.113.5":     "",
	} {
		if got := p.CheckDestination(netip.MustParseAddr(a)); got != want {
			t.Errorf("CheckDestination(%s) = %q, want %q", a, got, want)
		}
	}
}
