package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv/imdsfake"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/lifecycle/asfake"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// What the fake instance metadata says about the appliances (one
// instance id each, from scaleInInstance up).
const (
	scaleInInstance = "i-0e2e5ca1e1000c0d"
	scaleInGroup    = "gwlbproxy-e2e-asg"
	scaleInHook     = "gwlbproxy-e2e-drain"
)

func instanceOf(i int) string { return fmt.Sprintf("%s%x", scaleInInstance, 0xe+i) }

// Long download through a bumped connection: 20 MB at 4 MB/s.
const (
	downloadSize = 20 << 20
	downloadRate = 4 << 20
)

// TestScaleIn is issue 7's graceful scale-in, end to end: real
// appliances behind the GWLB simulator, which health-checks them every
// 200ms, with a bumped 20 MB download in flight and a new request every
// 100ms. The appliance carrying the download drains, started by its
// lifecycle state turning Terminated in (fake) IMDS, or by SIGTERM. Then:
// its health check turns 503 "draining"; once the simulator has seen that
// it places no new flow on it, while the download's flow keeps being
// carried to it and completes byte-exact. With two appliances new flows
// go to the other one and are answered there; with one they find no
// healthy target and are dropped (no request started after that gets an
// answer). Every request that got a response has its record at the
// CloudWatch Logs fake; with the lifecycle trigger CompleteLifecycleAction
// is called exactly once, with the group, hook and instance id from IMDS,
// after the draining appliance's last record was stored (with SIGTERM it
// is not called: the instance is not being scaled in); the draining
// appliance exits 0 and leaves no tunnel interface, nftables table or
// policy rule behind.
func TestScaleIn(t *testing.T) {
	t.Run("lifecycle/two-appliances", func(t *testing.T) { testScaleIn(t, true, 2) })
	t.Run("sigterm/one-appliance", func(t *testing.T) { testScaleIn(t, false, 1) })
}

// serveInNS serves h on 127.0.0.1 inside ns (the listener is created on a
// thread in that namespace) and returns its URL.
func serveInNS(t *testing.T, ns *gwlbsim.NS, h http.Handler) (string, error) {
	var l net.Listener
	err := ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	})
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return "http://" + l.Addr().String(), nil
}

// steadyResult is one of the steady requests.
type steadyResult struct {
	start  time.Time
	status int
	port   int
	err    error
}

func testScaleIn(t *testing.T, viaLifecycle bool, appliances int) {
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root (network namespaces, tun devices, nftables); run the suite as root, e.g. sudo go test ./cmd/internal/e2e")
	}
	began := time.Now()
	// One IMDSv2 fake per appliance (imdsfake): instance id, region, the
	// group tag and the lifecycle state.
	mds := make([]*imdsfake.Server, appliances)
	for i := range mds {
		mds[i] = &imdsfake.Server{InstanceID: instanceOf(i), Region: "us-east-1"}
		mds[i].SetState("InService")
		mds[i].SetTag("aws:autoscaling:groupName", scaleInGroup)
	}
	as := &asfake.Server{}
	mdURLs, asURLs := make([]string, appliances), make([]string, appliances)
	streams := []string{demo.LogStream}
	for i := range appliances - 1 {
		streams = append(streams, demo.ExtraLogStream(i))
	}
	lifecycleConfig := func(c *config.Config, i int) {
		c.InstanceID = ""              // from IMDS, as on EC2
		c.AWS.IMDSEndpoint = mdURLs[i] // one IMDS for the instance id and the lifecycle state
		c.Lifecycle.Enabled = true
		c.Lifecycle.HookName = scaleInHook
		c.Lifecycle.GroupName = "" // from the instance's tags in IMDS
		c.Lifecycle.PollInterval = time.Second
		c.AWS.Endpoints.AutoScaling = asURLs[i]
		c.Drain.Deadline = 45 * time.Second
	}

	ctx := testCtx(t, 3*time.Minute)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	e, err := demo.Start(sctx, demo.Options{
		Mode: steer.EgressNAT, Binary: binary, Dir: t.TempDir(), Prefix: "gsi", CloudWatchFake: true,
		ExtraAppliances: appliances - 1,
		Progress:        func(s string) { t.Log(s) },
		// GWLB health-checks the appliances where the demo's health check
		// listens, every 200ms; 2 failures make one unhealthy.
		Sim: gwlbsim.Config{Logger: simLogger(t), HealthCheck: &gwlbsim.HealthCheck{
			Port: demo.HealthPort, Path: "/", Interval: 200 * time.Millisecond, Timeout: 2 * time.Second,
			HealthyThreshold: 2, UnhealthyThreshold: 2,
		}},
		// IMDS and Auto Scaling fakes on 127.0.0.1 in each appliance's
		// namespace.
		Prepare: func(ctx context.Context, e *demo.Env) error {
			nss := []*gwlbsim.NS{e.Net.Topo.Appliance}
			for _, x := range e.Net.Topo.Extra {
				nss = append(nss, x.NS)
			}
			for i, ns := range nss {
				var err error
				if mdURLs[i], err = serveInNS(t, ns, mds[i]); err != nil {
					return fmt.Errorf("imds fake: %w", err)
				}
				if asURLs[i], err = serveInNS(t, ns, as); err != nil {
					return fmt.Errorf("auto scaling fake: %w", err)
				}
			}
			// Each call notes how many records every appliance's log
			// stream held at that moment.
			as.OnCall = func(url.Values) any {
				var n []int
				for _, s := range streams {
					n = append(n, e.CloudWatch.Count(demo.LogGroup, s))
				}
				return n
			}
			return nil
		},
		Modify:      withDatapath(t, func(c *config.Config) { lifecycleConfig(c, 0) }),
		ModifyExtra: func(i int, c *config.Config) { lifecycleConfig(c, i+1) },
	})
	if err != nil {
		t.Fatalf("demo environment: %v", err)
	}
	apps := append([]*demo.Appliance{e.App}, e.Extra...)
	nss := []*gwlbsim.NS{e.Net.Topo.Appliance}
	addrs := []netip.Addr{gwlbsim.ApplianceAddr}
	for _, x := range e.Net.Topo.Extra {
		nss = append(nss, x.NS)
		addrs = append(addrs, x.Addr)
	}
	names := e.Net.Namespaces()
	t.Cleanup(func() {
		if t.Failed() {
			for i, a := range apps {
				t.Logf("appliance %d log tail:\n%s", i, a.LogTail(40))
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
	sim := e.Net.Sim
	target := func(i int) gwlbsim.TargetStats {
		ts, err := sim.Target(addrs[i])
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	waitFor(t, 60*time.Second, "the simulator to see every appliance healthy", func() (bool, string) {
		ts := sim.Targets()
		for _, x := range ts {
			if !x.Healthy {
				return false, fmt.Sprintf("%+v", ts)
			}
		}
		return len(ts) == appliances, ""
	})
	t.Logf("setup of %d appliance(s) took %s", appliances, time.Since(began).Round(time.Millisecond))

	// Responses: the client port of every request that got one.
	type answered struct {
		port int
		path string
	}
	var (
		respMu    sync.Mutex
		responses []answered
	)
	got := func(port int, path string) {
		respMu.Lock()
		responses = append(responses, answered{port, path})
		respMu.Unlock()
	}
	if r := e.Clients[0].Get(ctx, "https://"+demo.HostApp+"/"); r.Err != nil || r.Status != 200 || r.Issuer != demo.ApplianceCAName {
		t.Fatalf("bumped request before the drain: %v %d %q", r.Err, r.Status, r.Issuer)
	} else {
		got(int(r.Local.Port()), "/")
	}

	// The long download, from VPC B.
	dlPath := fmt.Sprintf("/bytes?n=%d&rate=%d", downloadSize, downloadRate)
	var dlPort atomic.Int64
	dlReq, _ := http.NewRequestWithContext(withLocalPort(ctx, &dlPort), http.MethodGet, "https://"+demo.HostApp+dlPath, nil)
	dlResp, err := e.Clients[1].HTTPClient(false).Do(dlReq)
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	defer dlResp.Body.Close()
	if dlResp.StatusCode != 200 || dlResp.TLS == nil || dlResp.TLS.PeerCertificates[0].Issuer.CommonName != demo.ApplianceCAName {
		t.Fatalf("download: status %d, not bumped by the appliance", dlResp.StatusCode)
	}
	var dlRead atomic.Int64
	dlDone := make(chan error, 1)
	go func() { dlDone <- readPattern(dlResp.Body, &dlRead) }()
	waitFor(t, 30*time.Second, "the download to be under way", func() (bool, string) {
		return dlRead.Load() >= 1<<20, fmt.Sprint(dlRead.Load())
	})
	// The appliance that drains is the one GWLB put the download on.
	dlKey := flow.NewKey(unix.IPPROTO_TCP, netip.AddrPortFrom(gwlbsim.ClientAddr, uint16(dlPort.Load())), netip.AddrPortFrom(demo.AddrApp, 443))
	d := -1
	for _, f := range sim.Flows() {
		if f.EndpointID == demo.EndpointB && f.Key == dlKey {
			for i, a := range addrs {
				if a == f.Target {
					d = i
				}
			}
		}
	}
	if d < 0 {
		t.Fatalf("the simulator has no flow %s", dlKey)
	}
	drained := apps[d]
	t.Logf("the download runs through appliance %d (%s, %s); it is the one to drain", d, addrs[d], instanceOf(d))

	// Steady new requests from VPC A, each on a new connection (a new
	// flow), each given 3s. The transport dials on its own context (a
	// cancelled request's dial goes on for a later request): bound it,
	// or SYNs the simulator drops would be retried for two minutes, and
	// wait for the dials before the namespaces go away.
	// A detached dial may start while dials.Wait runs (Add from zero
	// concurrent with Wait is a race): once waiting has begun, refuse.
	var (
		dials       sync.WaitGroup
		dialsMu     sync.Mutex
		dialsClosed bool
	)
	steadyClient := e.Clients[0].HTTPClient(false)
	steadyClient.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialsMu.Lock()
		if dialsClosed {
			dialsMu.Unlock()
			return nil, errors.New("steady requests are over")
		}
		dials.Add(1)
		dialsMu.Unlock()
		defer dials.Done()
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		return e.Clients[0].Dial(ctx, network, addr)
	}
	var (
		steadyMu sync.Mutex
		steady   []steadyResult
	)
	stopSteady := make(chan struct{})
	steadyDone := make(chan struct{})
	go func() {
		defer close(steadyDone)
		var wg sync.WaitGroup
		defer wg.Wait()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSteady:
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				res := steadyResult{start: time.Now()}
				var port atomic.Int64
				req, _ := http.NewRequestWithContext(withLocalPort(rctx, &port), http.MethodGet, "https://"+demo.HostApp+"/", nil)
				resp, err := steadyClient.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					res.status = resp.StatusCode
				}
				res.port, res.err = int(port.Load()), err
				if err == nil && res.status == 200 {
					got(res.port, "/")
				}
				steadyMu.Lock()
				steady = append(steady, res)
				steadyMu.Unlock()
			}()
		}
	}()
	time.Sleep(time.Second) // some steady requests while healthy

	// Scale-in begins.
	before := sim.Targets()
	trigger := time.Now()
	if viaLifecycle {
		polls := mds[d].Reads("meta-data/autoscaling/target-lifecycle-state")
		mds[d].SetState("Terminated")
		t.Logf("IMDS target-lifecycle-state = Terminated for %s (it had polled %d times)", instanceOf(d), polls)
	} else {
		if err := drained.Cmd.Process.Signal(unix.SIGTERM); err != nil {
			t.Fatal(err)
		}
		t.Log("SIGTERM sent")
	}
	waitFor(t, 30*time.Second, "health 503 draining", func() (bool, string) {
		c, status, err := healthOf(ctx, nss[d], addrs[d])
		if err != nil {
			return false, err.Error()
		}
		return c == http.StatusServiceUnavailable && status == "draining", fmt.Sprintf("%d %s", c, status)
	})
	t.Logf("health 503 draining %s after the trigger", time.Since(trigger).Round(time.Millisecond))
	waitFor(t, 30*time.Second, "the simulator to mark the appliance unhealthy", func() (bool, string) {
		ts := target(d)
		return !ts.Healthy, fmt.Sprintf("%+v", ts)
	})
	atUnhealthy := sim.Targets()
	sawUnhealthy := time.Now()
	dropsAtUnhealthy := sim.Stats().NoHealthyTarget
	t.Logf("simulator marked appliance %d unhealthy %s after the trigger (last check %s, %d new flows placed on it so far)",
		d, atUnhealthy[d].Since.Sub(trigger).Round(time.Millisecond), atUnhealthy[d].LastCheck, atUnhealthy[d].NewFlows)
	if dlRead.Load() >= downloadSize {
		t.Fatalf("the download finished before the drain began; nothing in flight was tested")
	}

	// Let new flows come for a while, then stop.
	time.Sleep(1500 * time.Millisecond)
	close(stopSteady)
	<-steadyDone
	dialsMu.Lock()
	dialsClosed = true
	dialsMu.Unlock()
	dials.Wait()

	select {
	case err := <-dlDone:
		if err != nil {
			t.Fatalf("in-flight download during the drain: %v after %d bytes", err, dlRead.Load())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("download did not complete (%d bytes read)", dlRead.Load())
	}
	got(int(dlPort.Load()), "/bytes")
	t.Logf("in-flight download completed %s after the trigger: %d bytes, byte-exact", time.Since(trigger).Round(time.Millisecond), dlRead.Load())

	select {
	case <-drained.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("draining appliance did not exit after the drain")
	}
	if code := drained.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("draining appliance exit code %d, want 0", code)
	}
	t.Logf("draining appliance exited %s after the trigger", time.Since(trigger).Round(time.Millisecond))
	for i, a := range apps {
		select {
		case <-a.Done():
			if i != d {
				t.Errorf("appliance %d, not draining, exited", i)
			}
		default:
		}
	}

	// The simulator placed no new flow on the draining appliance; new
	// flows went to the other one, or (alone) found no healthy target.
	final := sim.Targets()
	if n := final[d].NewFlows - atUnhealthy[d].NewFlows; n != 0 {
		t.Errorf("simulator placed %d new flows on the draining appliance after marking it unhealthy", n)
	}
	if final[d].Healthy {
		t.Error("simulator sees the exited appliance healthy")
	}
	if final[d].Sent <= atUnhealthy[d].Sent {
		t.Errorf("no packet reached the draining appliance after it was marked unhealthy (download flow not carried)")
	}
	drops := sim.Stats().NoHealthyTarget - dropsAtUnhealthy
	movedFlows := uint64(0)
	for i := range final {
		if i != d {
			movedFlows += final[i].NewFlows - atUnhealthy[i].NewFlows
		}
	}
	t.Logf("after the simulator saw 503: %d new flows placed on the other appliance(s), %d packets of new flows found no healthy target", movedFlows, drops)
	if appliances > 1 {
		if drops != 0 {
			t.Errorf("%d packets found no healthy target though another appliance was healthy", drops)
		}
		if movedFlows == 0 {
			t.Error("no new flow went to the healthy appliance during the drain; the test proved nothing about placement")
		}
	} else if drops == 0 {
		t.Error("no new flow was attempted while the appliance drained; the test proved nothing about placement")
	}
	steadyMu.Lock()
	var ok, failed, late, lateOK, window, windowOK int
	for _, s := range steady {
		answered := s.err == nil && s.status == 200
		if answered {
			ok++
		} else {
			failed++
		}
		if s.start.After(sawUnhealthy) {
			late++
			if answered {
				lateOK++
			}
		}
		if s.start.After(trigger) && s.start.Before(atUnhealthy[d].Since) {
			window++
			if answered {
				windowOK++
			}
		}
	}
	steadyMu.Unlock()
	t.Logf("steady requests: %d answered, %d failed; %d started after the simulator saw 503, %d of them answered", ok, failed, late, lateOK)
	if appliances == 1 && lateOK > 0 {
		t.Errorf("%d requests started after the simulator saw 503 were answered: new flows reached the draining appliance", lateOK)
	}
	if appliances > 1 && lateOK == 0 {
		t.Errorf("none of the %d requests started after the simulator saw 503 was answered by the other appliance", late)
	}
	// GWLB notices a 503 only after UnhealthyThreshold probes; the flows
	// it places meanwhile are new flows the draining appliance gets. Not
	// asserted (how the appliance treats them is the drain's policy),
	// reported so the window stays visible.
	t.Logf("between the trigger and the simulator marking the appliance unhealthy: %d new flows placed on it, %d steady requests started, %d of them answered",
		atUnhealthy[d].NewFlows-before[d].NewFlows, window, windowOK)

	// Zero records lost: every response has its record at CloudWatch,
	// from the appliance that served it.
	byPort := map[int][]demo.Record{}
	ids := map[string]int{}
	finalCounts := make([]int, len(streams))
	for si, stream := range streams {
		evs := e.CloudWatch.Events(demo.LogGroup, stream)
		finalCounts[si] = len(evs)
		for _, ev := range evs {
			var r demo.Record
			if err := json.Unmarshal([]byte(ev.Message), &r); err != nil || r.RecordID == "" {
				continue
			}
			if r.InstanceID != instanceOf(si) {
				t.Errorf("record in stream %s from instance %q, want %q", stream, r.InstanceID, instanceOf(si))
			}
			ids[r.RecordID]++
			byPort[r.ClientPort] = append(byPort[r.ClientPort], r)
		}
	}
	respMu.Lock()
	matched := map[string]bool{}
	for _, a := range responses {
		var rec *demo.Record
		for i, r := range byPort[a.port] {
			if path, _, _ := strings.Cut(r.Path, "?"); path == a.path && r.Status == 200 {
				rec = &byPort[a.port][i]
			}
		}
		if rec == nil {
			t.Errorf("response on client port %d (%s) has no record at CloudWatch Logs", a.port, a.path)
			continue
		}
		matched[rec.RecordID] = true
		if a.path == "/bytes" {
			if rec.BytesIn < downloadSize && rec.BytesOut < downloadSize {
				t.Errorf("download record counts %d in / %d out bytes, want >= %d", rec.BytesIn, rec.BytesOut, downloadSize)
			}
			if rec.InstanceID != instanceOf(d) {
				t.Errorf("download record from %s, want the draining %s", rec.InstanceID, instanceOf(d))
			}
		}
	}
	if len(matched) != len(responses) {
		t.Errorf("%d responses but %d distinct records for them", len(responses), len(matched))
	}
	t.Logf("%d responses, %d distinct records for them; %d distinct record ids at CloudWatch, per stream %v", len(responses), len(matched), len(ids), finalCounts)
	respMu.Unlock()

	// The lifecycle hook: completed once, after the spool was drained.
	calls := as.Calls()
	if viaLifecycle {
		if len(calls) != 1 {
			t.Fatalf("CompleteLifecycleAction called %d times, want 1", len(calls))
		}
		c := calls[0]
		records := c.Note.([]int)
		for k, want := range map[string]string{
			"AutoScalingGroupName": scaleInGroup, "LifecycleHookName": scaleInHook,
			"LifecycleActionResult": "CONTINUE", "InstanceId": instanceOf(d),
		} {
			if got := c.Params.Get(k); got != want {
				t.Errorf("CompleteLifecycleAction %s = %q, want %q", k, got, want)
			}
		}
		if records[d] != finalCounts[d] {
			t.Errorf("CompleteLifecycleAction came when %d of the draining appliance's %d records were at CloudWatch", records[d], finalCounts[d])
		}
		t.Logf("CompleteLifecycleAction %s after the trigger, with all %d of the draining appliance's records stored", c.At.Sub(trigger).Round(time.Millisecond), records[d])
	} else if len(calls) != 0 {
		t.Errorf("CompleteLifecycleAction called %d times on SIGTERM without a terminating lifecycle state", len(calls))
	}

	checkApplianceClean(t, nss[d])
}

// healthOf asks the health check at addr:HealthPort from inside ns.
func healthOf(ctx context.Context, ns *gwlbsim.NS, addr netip.Addr) (int, string, error) {
	hc := ns.HTTPClient(10*time.Second, &net.Dialer{})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+netip.AddrPortFrom(addr, demo.HealthPort).String()+"/", nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var rep struct {
		Status string `json:"status"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return resp.StatusCode, "", fmt.Errorf("health body: %w", err)
	}
	return resp.StatusCode, rep.Status, nil
}

// checkApplianceClean fails if the exited appliance left tunnel
// interfaces, its nftables table or policy routing rules in its namespace.
func checkApplianceClean(t *testing.T, app *gwlbsim.NS) {
	t.Helper()
	links, err := app.Netlink().LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, "gwi-") || strings.HasPrefix(n, "gwo-") {
			t.Errorf("interface %s left behind", n)
		}
	}
	conn, err := nftables.New(nftables.WithNetNSFd(int(app.Handle())))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := conn.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == steer.DefaultConfig().TableName {
			t.Errorf("nftables table %s left behind", tb.Name)
		}
	}
	rules, err := app.Netlink().RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.Priority != 0 && r.Priority != 32766 && r.Priority != 32767 {
			t.Errorf("policy rule left behind: %v", r)
		}
	}
}

// readPattern reads a /bytes answer to the end, checking every byte.
func readPattern(r io.Reader, n *atomic.Int64) error {
	br := bufio.NewReaderSize(r, 64<<10)
	buf := make([]byte, 64<<10)
	var off int64
	for {
		k, err := br.Read(buf)
		for i := range k {
			if buf[i] != demo.PatternByte(off+int64(i)) {
				return fmt.Errorf("byte %d differs", off+int64(i))
			}
		}
		off += int64(k)
		n.Store(off)
		if err == io.EOF {
			if off != downloadSize {
				return fmt.Errorf("got %d bytes, want %d", off, downloadSize)
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// withLocalPort stores the client port of the connection the request
// gets into port.
func withLocalPort(ctx context.Context, port *atomic.Int64) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if a, ok := info.Conn.LocalAddr().(*net.TCPAddr); ok {
			port.Store(int64(a.Port))
		}
	}})
}

// simLogger logs the simulator's debug lines with SCALEIN_DEBUG set.
func simLogger(t *testing.T) *slog.Logger {
	if os.Getenv("SCALEIN_DEBUG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}
