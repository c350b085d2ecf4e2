package demo

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

func TestRecordsParse(t *testing.T) {
	r := NewRecords()
	r.Add([]byte(`{"time":"2026-01-02T03:04:05Z","record_id":"ab","client_port":123,"action":"allow","status":200}`))
	r.Add([]byte(`{"_aws":{"CloudWatchMetrics":[]},"requests":3}`)) // EMF: not a request record
	r.Add([]byte(`not json`))
	r.Add([]byte("   "))
	all := r.All()
	if len(all) != 1 || all[0].ClientPort != 123 || all[0].Field("status") != "200" || all[0].Field("action") != "allow" {
		t.Fatalf("records %+v", all)
	}
	if got := strings.Join(all[0].Keys, ","); got != "time,record_id,client_port,action,status" {
		t.Errorf("keys %s", got)
	}
	if m := MissingFields(&all[0]); len(m) != len(RecordFields)-5 {
		t.Errorf("missing %v", m)
	}
	if len(r.Bad()) != 1 {
		t.Errorf("bad lines %v", r.Bad())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.Wait(ctx, 2, func(*Record) bool { return true }); err == nil {
		t.Error("Wait for a second record returned without one")
	}
	go r.Add([]byte(`{"record_id":"cd"}`))
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if got, err := r.Wait(ctx2, 2, func(*Record) bool { return true }); err != nil || len(got) != 2 {
		t.Errorf("Wait: %v %d", err, len(got))
	}
}

func TestParseMetrics(t *testing.T) {
	m, err := parseMetrics(strings.NewReader("# HELP x\n# TYPE x counter\ngwlbproxy_steer_packets_total{counter=\"quic_dropped\"} 3\ngo_goroutines 12\nbad line\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m[`gwlbproxy_steer_packets_total{counter="quic_dropped"}`] != 3 || m["go_goroutines"] != 12 || len(m) != 2 {
		t.Errorf("%v", m)
	}
}

// TestMakeFiles: the generated configuration passes the appliance's
// strict decoding and validation in both modes.
func TestMakeFiles(t *testing.T) {
	in, err := NewInternet()
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{steer.EgressNAT, steer.EgressTunnel} {
		f, err := MakeFiles(t.TempDir(), mode, in.CAPEM, nil)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		c, err := config.Load(f.Config, false)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if c.Steer.EgressMode != mode || c.Proxy.UpstreamCABundle != f.InternetCA || len(c.Proxy.Policy.Rules) != 3 {
			t.Errorf("%s: config %+v", mode, c.Steer)
		}
		if mode == steer.EgressNAT && c.Steer.EgressInterface != EgressInterface {
			t.Errorf("egress_interface %q", c.Steer.EgressInterface)
		}
	}
}
