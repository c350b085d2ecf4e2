package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/policysource/policyfake"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

const fleetDocV1 = `
default_action: deny
rules:
  - {name: fleet-splice-bank, action: splice, domains: [bank.demo.test]}
  - {name: fleet-deny-blocked, action: deny, domains: [blocked.demo.test]}
  - {name: fleet-allow, action: allow, domains: ["*.demo.test"]}
`

const fleetDocV2 = `
default_action: deny
rules:
  - {name: fleet-deny-app, action: deny, domains: [app.demo.test]}
  - {name: fleet-allow, action: allow, domains: ["*.demo.test"]}
`

// policyHealth is an appliance's health status and its "policy" stats.
func policyHealth(ctx context.Context, ns *gwlbsim.NS, addr netip.Addr) (int, map[string]any, error) {
	hc := ns.HTTPClient(10*time.Second, &net.Dialer{})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+netip.AddrPortFrom(addr, demo.HealthPort).String()+"/", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var rep struct {
		Checks map[string]struct {
			Stats map[string]any `json:"stats"`
		} `json:"checks"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return resp.StatusCode, nil, err
	}
	return resp.StatusCode, rep.Checks["policy"].Stats, nil
}

func fetchField(st map[string]any, k string) any {
	f, _ := st["fetch"].(map[string]any)
	return f[k]
}

// TestFleetPolicy: two appliances poll one S3 object or SSM parameter
// (the real SDK against a local fake in each appliance's namespace). A new
// version is enforced by both within one poll interval; an appliance
// restarted while the source is down enforces its last good copy; one
// without a copy denies everything and says so in its health check, and
// picks the policy up by itself when the source is back.
func TestFleetPolicy(t *testing.T) {
	for _, src := range []string{policy.SourceS3, policy.SourceSSM} {
		t.Run(src, func(t *testing.T) { testFleetPolicy(t, src) })
	}
}

func testFleetPolicy(t *testing.T, kind string) {
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root (network namespaces, tun devices, nftables)")
	}
	const bucket, key, param = "fleet-policy", "gwlbproxy/policy.yaml", "/egress/gwlbproxy/policy"
	const poll = 5 * time.Second
	fake := policyfake.New()
	publish := func(doc string) {
		if kind == policy.SourceS3 {
			fake.PutObject(bucket, key, []byte(doc))
		} else if _, err := fake.PutParameter(param, doc, "Standard"); err != nil {
			t.Fatal(err)
		}
	}
	publish(fleetDocV1)
	urls := make([]string, 2)
	source := func(c *config.Config, i int) {
		sc := policy.DefaultSourceConfig()
		sc.Source, sc.Region, sc.PollInterval = kind, "us-east-1", poll
		c.AWS.Endpoints.Set(kind, urls[i]) // aws.endpoints.s3 / .ssm
		sc.S3 = policy.S3Source{Bucket: bucket, Key: key}
		sc.SSM = policy.SSMSource{Parameter: param}
		sc.LastGood = filepath.Join(filepath.Dir(c.Logship.Spool.Dir), "policy-last-good.json")
		c.Proxy.Policy.Rules = nil // the fleet document decides
		c.Proxy.Policy.Source = sc
	}
	ctx := testCtx(t, 4*time.Minute)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	e, err := demo.Start(sctx, demo.Options{
		Mode: steer.EgressNAT, Binary: binary, Dir: t.TempDir(), Prefix: map[string]string{policy.SourceS3: "gp3", policy.SourceSSM: "gpm"}[kind], CloudWatchFake: true,
		ExtraAppliances: 1,
		Progress:        func(s string) { t.Log(s) },
		Prepare: func(ctx context.Context, e *demo.Env) error {
			for i, ns := range []*gwlbsim.NS{e.Net.Topo.Appliance, e.Net.Topo.Extra[0].NS} {
				var err error
				if urls[i], err = serveInNS(t, ns, fake); err != nil {
					return fmt.Errorf("%s fake: %w", kind, err)
				}
			}
			return nil
		},
		Modify:      withDatapath(t, func(c *config.Config) { source(c, 0) }),
		ModifyExtra: func(i int, c *config.Config) { source(c, i+1) },
	})
	if err != nil {
		t.Fatalf("demo environment: %v", err)
	}
	names := e.Net.Namespaces()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("appliance log tail:\n%s", e.App.LogTail(30))
			for _, x := range e.Extra {
				t.Logf("extra appliance log tail:\n%s", x.LogTail(30))
			}
		}
		if err := e.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		for _, ns := range names {
			if _, err := os.Stat("/run/netns/" + ns); err == nil {
				t.Errorf("namespace %s left behind", ns)
			}
		}
	})
	nss := []*gwlbsim.NS{e.Net.Topo.Appliance, e.Net.Topo.Extra[0].NS}
	addrs := []netip.Addr{gwlbsim.ApplianceAddr, e.Net.Topo.Extra[0].Addr}
	versions := func() ([]string, string) {
		var vs []string
		for i := range nss {
			_, st, err := policyHealth(ctx, nss[i], addrs[i])
			if err != nil {
				return nil, err.Error()
			}
			v, _ := st["policy_version"].(string)
			vs = append(vs, v)
		}
		return vs, fmt.Sprint(vs)
	}
	vs, _ := versions()
	if len(vs) != 2 || vs[0] == "" || vs[0] != vs[1] || !strings.Contains(vs[0], "@") {
		t.Fatalf("both appliances should start on the same fleet policy: %v", vs)
	}
	v1 := vs[0]
	r := e.Clients[0].Get(ctx, "https://"+demo.HostApp+"/")
	if r.Err != nil || r.Status != 200 {
		t.Fatalf("v1 allows %s: %v %d", demo.HostApp, r.Err, r.Status)
	}

	// A new version: both converge within one poll interval.
	publish(fleetDocV2)
	changed := time.Now()
	var v2 string
	waitFor(t, poll+5*time.Second, "both appliances on the new version", func() (bool, string) {
		vs, s := versions()
		if len(vs) == 2 && vs[0] != v1 && vs[0] == vs[1] && vs[0] != "" {
			v2 = vs[0]
			return true, s
		}
		return false, s
	})
	t.Logf("converged on %s in %s (poll interval %s)", v2, time.Since(changed).Round(time.Millisecond), poll)
	for i := range e.Clients {
		r := e.Clients[i].Get(ctx, "https://"+demo.HostApp+"/")
		if r.Err != nil || r.Status != 403 || !strings.Contains(r.Body, "fleet-deny-app") {
			t.Fatalf("v2 from %s: %v %d %q", e.Clients[i].Name, r.Err, r.Status, r.Body)
		}
	}
	// The deny records, from whichever appliance GWLB sent the flows to,
	// carry the new policy_version.
	waitFor(t, 30*time.Second, "deny records with policy_version "+v2, func() (bool, string) {
		n := 0
		for _, stream := range []string{demo.LogStream, demo.ExtraLogStream(0)} {
			for _, ev := range e.CloudWatch.Events(demo.LogGroup, stream) {
				var rec demo.Record
				if json.Unmarshal([]byte(ev.Message), &rec) == nil && rec.Rule == "fleet-deny-app" && rec.PolicyVersion == v2 {
					n++
				}
			}
		}
		return n >= len(e.Clients), fmt.Sprint(n, " records")
	})

	// Cold start with the source down: the last good copy (v2) is enforced.
	if err := e.App.Stop(30 * time.Second); err != nil {
		t.Logf("stop: %v", err)
	}
	fake.Down(true)
	if err := e.StartAppliance(ctx); err != nil {
		t.Fatalf("restart with the source down: %v", err)
	}
	// The policy check is green (a last good copy is a policy); the
	// verdict may take a moment for the other components.
	waitFor(t, 30*time.Second, "the restarted appliance healthy on the last good copy", func() (bool, string) {
		code, st, err := policyHealth(ctx, nss[0], addrs[0])
		return err == nil && code == 200 && st["policy_version"] == v2 && fetchField(st, "from_last_good_copy") == true,
			fmt.Sprint(code, st, err)
	})
	if !e.App.LogContains("enforcing the last good copy") {
		t.Fatalf("no log line about the last good copy:\n%s", e.App.LogTail(20))
	}
	for i := range e.Clients {
		r := e.Clients[i].Get(ctx, "https://"+demo.HostApp+"/")
		if r.Err != nil || r.Status != 403 {
			t.Fatalf("after a cold start from the last good copy, from %s: %v %d", e.Clients[i].Name, r.Err, r.Status)
		}
	}

	// No copy at all and the source down: deny everything, health says why.
	if err := e.App.Stop(30 * time.Second); err != nil {
		t.Logf("stop: %v", err)
	}
	os.Remove(filepath.Join(e.Files.Dir, "policy-last-good.json"))
	if err := e.StartAppliance(ctx); err != nil {
		t.Fatalf("restart without a copy: %v", err)
	}
	code, st, err := policyHealth(ctx, nss[0], addrs[0])
	if err != nil || code != 503 || fetchField(st, "fail_closed") != true {
		t.Fatalf("fail closed: %d %v %v", code, st, err)
	}
	// The source back: the appliance picks up the fleet policy by itself.
	fake.Down(false)
	waitFor(t, poll+5*time.Second, "the restarted appliance back on the fleet policy", func() (bool, string) {
		code, st, err := policyHealth(ctx, nss[0], addrs[0])
		return err == nil && code == 200 && st["policy_version"] == v2, fmt.Sprint(code, st, err)
	})
}
