package e2e

import (
	"slices"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flowlog"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// checkTour runs the demo's tour and fails for every step that did not go
// as the appliance should behave (each step checks its responses and the
// matching record's fields itself).
func checkTour(t *testing.T, e *demo.Env) {
	t.Helper()
	steps := e.Tour(testCtx(t, 3*time.Minute), nil)
	if len(steps) != len(demo.TourSteps) {
		t.Fatalf("tour ran %d of %d steps", len(steps), len(demo.TourSteps))
	}
	for _, s := range steps {
		for _, l := range s.Said {
			t.Logf("%s: %s", s.Name, l)
		}
		if !s.OK {
			t.Errorf("step %s (%s): %s", s.Name, s.Title, s.Problem)
		}
	}
	checkAllRecords(t, e)
}

// checkAllRecords: every record has every contract field, this
// appliance's instance id, a known endpoint, a valid action, and a unique
// record id; nothing else was written where records go.
func checkAllRecords(t *testing.T, e *demo.Env) {
	t.Helper()
	if bad := e.Records.Bad(); len(bad) > 0 {
		t.Errorf("%d lines where records go are not JSON objects, e.g. %q", len(bad), bad[0])
	}
	ids := map[string]bool{}
	eps := []string{demo.EndpointOf(demo.EndpointA), demo.EndpointOf(demo.EndpointB)}
	for _, r := range e.Records.All() {
		if m := demo.MissingFields(&r); len(m) > 0 {
			t.Errorf("record lacks %v: %s", m, r.Raw)
		}
		if r.InstanceID != "demo-appliance" {
			t.Errorf("instance_id %q: %s", r.InstanceID, r.Raw)
		}
		if r.RecordType == flowlog.TypeSummary {
			// Counts, not a flow: no endpoint.
		} else if !slices.Contains(eps, r.EndpointID) {
			t.Errorf("endpoint_id %q not one of %v: %s", r.EndpointID, eps, r.Raw)
		}
		if r.RecordType != flowlog.TypeSummary && !slices.Contains([]string{"allow", "deny", "splice", "error"}, r.Action) {
			t.Errorf("action %q: %s", r.Action, r.Raw)
		}
		if r.Time.IsZero() || time.Since(r.Time) > 10*time.Minute {
			t.Errorf("time %v: %s", r.Time, r.Raw)
		}
		if ids[r.RecordID] {
			t.Errorf("duplicate record_id %s", r.RecordID)
		}
		ids[r.RecordID] = true
	}
}

// TestTourNAT: everything the demo shows, two-arm: HTTP, bumped HTTPS
// (leaf from the appliance CA), overlapping client addresses behind two
// endpoints, splice, deny page, bad upstream certificate, IMDS denied,
// ping and UDP forwarded with masquerade, QUIC dropped; records on stdout.
func TestTourNAT(t *testing.T) {
	e := newEnv(t, steer.EgressNAT, nil, false)
	checkTour(t, e)
}

// TestTourTunnel: the same in one-arm mode (upstreams keep the client's
// address and port and go back through GWLB), with the records shipped
// by logship to the CloudWatch Logs fake.
func TestTourTunnel(t *testing.T) {
	e := newEnv(t, steer.EgressTunnel, nil, true)
	checkTour(t, e)
	if n := e.CloudWatch.Count(demo.LogGroup, demo.LogStream); n < 7 {
		t.Errorf("CloudWatch fake holds %d events, want a record per intercepted step", n)
	}
	// In one-arm mode the server sees the client itself.
	r := e.Clients[0].Get(testCtx(t, time.Minute), "https://"+demo.HostApp+"/")
	if r.Err != nil || r.Status != 200 {
		t.Fatalf("GET: %v %d", r.Err, r.Status)
	}
	want := "you came from " + r.Local.String()
	if !contains(r.Body, want) {
		t.Errorf("server saw another source: %q, want %q", r.Body, want)
	}
}
