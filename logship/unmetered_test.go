package logship

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestShipUnmetered: records shipped with Ship, not ShipRequest (flow
// records, issue 15; IDS alerts) reach the sink but are not requests in the
// EMF metrics.
func TestShipUnmetered(t *testing.T) {
	noLeak(t)
	e := newEnv(t)
	e.cfg.EMF = EMFConfig{Enabled: true, Namespace: "gwlbproxy", Interval: time.Hour}
	s := e.start(t)
	now := time.Now()
	for i := range 5 {
		if err := s.Ship(now, []byte(`{"record_type":"flow","action":"allow","n":`+string(rune('0'+i))+`}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	flows, emfs := 0, 0
	for _, ev := range e.fake.Events(e.cfg.CloudWatch.LogGroup, e.cfg.CloudWatch.LogStream) {
		switch {
		case strings.Contains(ev.Message, `"_aws"`) && strings.Contains(ev.Message, `"requests":`):
			emfs++ // a per-action record: flows were counted as requests
		case strings.Contains(ev.Message, `"_aws"`):
			// the per-instance record (backlog age) goes out every interval
		case strings.Contains(ev.Message, `"record_type":"flow"`):
			flows++
		}
	}
	if flows != 5 || emfs != 0 {
		t.Fatalf("%d flow records shipped (want 5), %d EMF per-action (request) records (want 0)", flows, emfs)
	}
}
