package evetail_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
	"github.com/gwlbproxy/gwlbproxy/logship/evetail"
)

// The appliance hands the tailer a *logship.Shipper: without these methods
// the tailer would fall back to at-least-once after a crash.
var _ evetail.SpoolView = (*logship.Shipper)(nil)

// alertLine7 is a Suricata 7 eve.json alert (shape from the proxy's e2e
// test), client 198.18.0.5:10007.
const alertLine7 = `{"timestamp":"2026-12-07T20:25:25.000007+0000","flow_id":1007,"in_iface":"gwlbmirror0","event_type":"alert","src_ip":"203.0.113.10","src_port":443,"dest_ip":"198.18.0.5","dest_port":10007,"proto":"TCP","direction":"to_client","alert":{"action":"allowed","gid":1,"signature_id":1900001,"rev":1,"signature":"marker in body","category":"","severity":3},"http":{"hostname":"good.test","url":"/x"},"app_proto":"http","flow":{"pkts_toserver":5,"pkts_toclient":4,"bytes_toserver":340,"bytes_toclient":518,"start":"2026-12-07T20:25:25.427045+0000","src_ip":"198.18.0.5","dest_ip":"203.0.113.10","src_port":10007,"dest_port":443}}` + "\n"

// TestAlertReachesCloudWatch: an alert goes through the real shipper
// (spool, real AWS SDK) to the CloudWatch Logs fake as an ids_alert record
// with the connection's client and destination.
func TestAlertReachesCloudWatch(t *testing.T) {
	fake := cwlfake.New(cwlfake.Options{})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	dir := t.TempDir()
	lc := logship.DefaultConfig()
	lc.Sink = logship.SinkCloudWatch
	lc.CloudWatch.LogGroup = "/gwlbproxy/test"
	lc.CloudWatch.LogStream = "i-test"
	lc.CloudWatch.AWS = cwlfake.AWSConfig(srv.URL, "eu-west-1")
	lc.CloudWatch.CreateGroup = true
	lc.Spool.Dir = filepath.Join(dir, "spool")
	lc.DeadLetterPath = filepath.Join(dir, "dead.jsonl")
	lc.FlushInterval = 20 * time.Millisecond
	sh, err := logship.New(context.Background(), lc, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close(context.Background())
	path := filepath.Join(dir, "eve.json")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(alertLine7)
	f.Close()
	tl, _ := evetail.New(evetail.Config{Path: path, StateFile: filepath.Join(dir, "pos"), Poll: 5 * time.Millisecond, InstanceID: "i-test"}, sh, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	go tl.Run(ctx)
	defer cancel()
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := fake.Events("/gwlbproxy/test", "i-test")
		if len(evs) > 0 {
			var r map[string]any
			if err := json.Unmarshal([]byte(evs[0].Message), &r); err != nil {
				t.Fatal(err)
			}
			if r["record_type"] != "ids_alert" || r["client_ip"] != "198.18.0.5" || r["client_port"] != float64(10007) ||
				r["dst_ip"] != "203.0.113.10" || r["dst_port"] != float64(443) || r["signature_id"] != float64(1900001) || r["instance_id"] != "i-test" {
				t.Fatalf("record %v", r)
			}
			if want := time.Date(2026, 12, 7, 20, 25, 25, 7000, time.UTC).UnixMilli(); evs[0].Timestamp != want {
				t.Errorf("event timestamp %d, want %d (the alert's)", evs[0].Timestamp, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no event at the fake")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
