package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/health"
	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

func checkNames(rep health.Report) []string {
	var n []string
	for k := range rep.Checks {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// waitHealth polls the health check until it answers code with check
// name's ok equal to ok.
func waitHealth(t *testing.T, ctx context.Context, e *demo.Env, code int, name string, ok bool) health.Report {
	t.Helper()
	var rep health.Report
	waitFor(t, 90*time.Second, fmt.Sprintf("health %d with %s ok=%v", code, name, ok), func() (bool, string) {
		c, r, err := e.Health(ctx)
		if err != nil {
			return false, err.Error()
		}
		rep = r
		cr, found := r.Checks[name]
		return c == code && found && cr.OK == ok, fmt.Sprintf("%d %s %+v", c, r.Status, cr)
	})
	return rep
}

// TestHealthLogShipper: while CloudWatch Logs fails every call the
// records stay in the spool, the log shipper's check fails and the
// health check answers 503 with a JSON body naming it; when the service
// recovers it turns 200 again and every record made during the outage
// arrives.
func TestHealthLogShipper(t *testing.T) {
	e := newEnv(t, steer.EgressNAT, nil, true)
	ctx := testCtx(t, 4*time.Minute)

	rep := waitHealth(t, ctx, e, http.StatusOK, "logship", true)
	t.Logf("healthy; checks %v", checkNames(rep))
	for _, name := range []string{"steer", "proxy", "tunnel", "logship"} {
		if cr, ok := rep.Checks[name]; !ok || !cr.OK {
			t.Errorf("check %s = %+v, want present and ok", name, cr)
		}
	}

	e.CloudWatch.InjectFault(cwlfake.ServiceUnavailable, -1)
	var outage []demo.Result
	for range 3 {
		r := e.Clients[0].Get(ctx, "https://"+demo.HostApp+"/")
		if r.Err != nil || r.Status != 200 {
			t.Fatalf("request during the outage: %v %d", r.Err, r.Status)
		}
		outage = append(outage, r)
	}
	rep = waitHealth(t, ctx, e, http.StatusServiceUnavailable, "logship", false)
	t.Logf("during the outage: status %q, logship error %q", rep.Status, rep.Checks["logship"].Error)
	if rep.Status != "unhealthy" || rep.Checks["logship"].Error == "" {
		t.Errorf("report %+v, want unhealthy with the shipper's error", rep)
	}

	e.CloudWatch.ClearFaults()
	waitHealth(t, ctx, e, http.StatusOK, "logship", true)
	for _, res := range outage {
		if _, err := e.Records.Wait(ctx, 1, func(r *demo.Record) bool { return r.Of(res) && r.Status == 200 }); err != nil {
			t.Errorf("record of the request from %s made during the outage: %v", res.Local, err)
		}
	}
	checkAllRecords(t, e)
}

// TestHealthSteering: when the steering table disappears (someone ran
// `nft flush ruleset`), the appliance notices, reinstalls it with the live
// tunnels' elements and traffic is intercepted again, without a restart.
// Until then the health check answers 503 naming steer, so GWLB stops
// sending flows to an appliance that would black-hole them. The health
// probe itself triggers the repair, so the 503 is normally seen exactly
// once (by the first probe after the flush); the test requires the repair
// (metric, log, stats) and the 200 after it, and logs whether it saw the
// 503 (another prober may see it first).
func TestHealthSteering(t *testing.T) {
	e := newEnv(t, steer.EgressNAT, nil, false)
	ctx := testCtx(t, 3*time.Minute)
	waitHealth(t, ctx, e, http.StatusOK, "steer", true)
	if r := e.Clients[0].Get(ctx, "https://"+demo.HostApp+"/"); r.Err != nil || r.Status != 200 {
		t.Fatalf("before: %v %d", r.Err, r.Status)
	}
	const metric = `gwlbproxy_steer_repairs_total{what="nftables"}`
	repairs := func() float64 {
		m, err := e.Metrics(ctx)
		if err != nil {
			t.Fatalf("metrics: %v", err)
		}
		return m[metric]
	}
	before := repairs()

	conn, err := nftables.New(nftables.WithNetNSFd(int(e.Net.Topo.Appliance.Handle())))
	if err != nil {
		t.Fatal(err)
	}
	conn.FlushRuleset()
	if err := conn.Flush(); err != nil {
		t.Fatalf("flushing the ruleset: %v", err)
	}
	saw503 := ""
	waitFor(t, 90*time.Second, "steering repaired and health 200", func() (bool, string) {
		c, r, err := e.Health(ctx)
		if err != nil {
			return false, err.Error()
		}
		cr := r.Checks["steer"]
		if c == http.StatusServiceUnavailable && !cr.OK && saw503 == "" {
			saw503 = cr.Error
		}
		return c == http.StatusOK && cr.OK && repairs() > before, fmt.Sprintf("%d %+v", c, cr)
	})
	if saw503 != "" {
		t.Logf("table gone: 503, steer error %q", saw503)
	} else {
		t.Logf("repaired before this test's probe saw the 503")
	}
	if !e.App.LogContains("steering altered by someone else; repaired") {
		t.Error("no repair logged")
	}
	if r := e.Clients[0].Get(ctx, "https://"+demo.HostApp+"/"); r.Err != nil || r.Status != 200 {
		t.Fatalf("after the repair: %v %d", r.Err, r.Status)
	}
	if n, err := e.SteerCounter(ctx, "intercepted"); err != nil || n == 0 {
		t.Fatalf("intercepted counter after the repair: %v %v", n, err)
	}
}

// TestHealthDraining: on SIGTERM the appliance answers 503 "draining"
// while an in-flight download finishes, then exits.
func TestHealthDraining(t *testing.T) {
	e := newEnv(t, steer.EgressNAT, nil, false)
	ctx := testCtx(t, 3*time.Minute)
	waitHealth(t, ctx, e, http.StatusOK, "proxy", true)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+demo.HostApp+"/slow?s=3", nil)
	resp, err := e.Clients[0].HTTPClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := e.App.Cmd.Process.Signal(syscallSIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "503 draining", func() (bool, string) {
		c, r, err := e.Health(ctx)
		if err != nil {
			return false, err.Error()
		}
		return c == http.StatusServiceUnavailable && r.Status == "draining", fmt.Sprintf("%d %s", c, r.Status)
	})
	select {
	case <-e.App.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("appliance did not exit after the drain")
	}
}
