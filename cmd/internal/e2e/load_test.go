package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// TestParallelHTTPS: 200 clients (100 per VPC, same client address behind
// two endpoints) each open a new bumped connection at the same moment.
// Every one gets the page through an appliance leaf, and every one has its
// own record naming its endpoint. No retries: a connection reset here was
// two endpoints' connections with the same 4-tuple (see
// TestSameTupleTwoEndpoints), fixed in tunnel/steer.
func TestParallelHTTPS(t *testing.T) {
	e := newEnv(t, steer.EgressNAT, nil, false)
	ctx := testCtx(t, 3*time.Minute)
	const n = 200
	type res struct {
		ep uint64
		r  demo.Result
	}
	results := make([]res, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c := e.Clients[i%2]
			results[i] = res{[]uint64{demo.EndpointA, demo.EndpointB}[i%2], c.Get(ctx, "https://"+demo.HostApp+"/")}
		}()
	}
	close(start)
	wg.Wait()
	// The two client namespaces share one kernel, which picks the same
	// ephemeral port (and near-identical SYNs) for simultaneous connects
	// from the same address to the same server: now and then a port is
	// taken in both VPCs at once. The appliance serves such a pair one
	// after the other (TestSameTupleTwoEndpoints); say how often it did.
	if v, err := e.SteerCounter(ctx, "tuple_collision"); err == nil && v > 0 {
		t.Logf("%v packets of a connection whose 4-tuple another endpoint's connection held were dropped (tuple_collision); the client retransmitted", v)
	} else if err != nil {
		t.Errorf("tuple_collision counter: %v", err)
	}
	type key struct {
		ep   string
		port int
	}
	want := map[key]bool{}
	failed := 0
	for _, x := range results {
		r := x.r
		if r.Err != nil || r.Status != 200 || r.Issuer != demo.ApplianceCAName || !contains(r.Body, "hello from "+demo.HostApp) {
			failed++
			if failed <= 5 {
				t.Errorf("client %s: err=%v status=%d issuer=%q body=%q", r.Local, r.Err, r.Status, r.Issuer, r.Body)
			}
			continue
		}
		want[key{demo.EndpointOf(x.ep), int(r.Local.Port())}] = true
	}
	if failed > 0 {
		t.Fatalf("%d of %d parallel requests failed", failed, n)
	}
	if len(want) != n {
		t.Fatalf("%d distinct (endpoint, client port) pairs, want %d", len(want), n)
	}
	_, err := e.Records.Wait(ctx, n, func(r *demo.Record) bool {
		return want[key{r.EndpointID, r.ClientPort}] && r.Action == "allow" && r.Status == 200 && r.SNI == demo.HostApp
	})
	if err != nil {
		t.Fatalf("records: %v", err)
	}
	checkAllRecords(t, e)
}

// TestLargeDownloadBoundedMemory: 50 MB through a bumped connection arrive
// intact (every byte checked against the server's pattern) while the
// appliance's peak RSS grows by far less than the body: the proxy streams.
func TestLargeDownloadBoundedMemory(t *testing.T) {
	e := newEnv(t, steer.EgressNAT, nil, false)
	ctx := testCtx(t, 3*time.Minute)
	// Warm up (CA leaf, pools, tunnel) so the baseline includes them.
	if r := e.Clients[0].Get(ctx, "https://"+demo.HostApp+"/"); r.Err != nil || r.Status != 200 {
		t.Fatalf("warm-up: %v %d", r.Err, r.Status)
	}
	hwm0, _, err := e.App.MemoryHWM()
	if err != nil {
		t.Fatal(err)
	}
	const size = 50 << 20
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://%s/bytes?n=%d", demo.HostApp, size), nil)
	resp, err := e.Clients[0].HTTPClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil || resp.TLS.PeerCertificates[0].Issuer.CommonName != demo.ApplianceCAName {
		t.Fatalf("status %d, want 200 through a bumped connection", resp.StatusCode)
	}
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	var off int64
	for {
		b, err := br.ReadByte()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", off, err)
		}
		if b != demo.PatternByte(off) {
			t.Fatalf("byte %d = %#x, want %#x", off, b, demo.PatternByte(off))
		}
		off++
	}
	if off != size {
		t.Fatalf("got %d bytes, want %d", off, size)
	}
	hwm1, rss, err := e.App.MemoryHWM()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("appliance VmHWM %d MiB before, %d MiB after a %d MiB download (VmRSS now %d MiB)", hwm0>>20, hwm1>>20, size>>20, rss>>20)
	if grow := hwm1 - hwm0; grow > 24<<20 {
		t.Errorf("peak RSS grew by %d MiB for a %d MiB body: the proxy buffers", grow>>20, size>>20)
	}
	recs, err := e.Records.Wait(ctx, 1, func(r *demo.Record) bool {
		return r.Path == "/bytes?redacted" || r.Path == fmt.Sprintf("/bytes?n=%d", size)
	})
	if err != nil {
		t.Fatalf("record: %v", err)
	}
	if r := recs[0]; r.BytesOut < size || r.Status != 200 || r.Action != "allow" {
		t.Errorf("record bytes_out=%d status=%d action=%s, want >= %d, 200, allow", r.BytesOut, r.Status, r.Action, size)
	}
}
