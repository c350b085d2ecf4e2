package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// TestRestartMidTraffic kills the appliance (SIGKILL, a crash) while a
// download streams and a keep-alive connection is open, and starts it
// again. The tunnels and rules come back, the old flows end with an error
// (reset or EOF) instead of hanging, and new flows from both VPCs work.
func TestRestartMidTraffic(t *testing.T) {
	for _, mode := range []string{steer.EgressNAT, steer.EgressTunnel} {
		t.Run(mode, func(t *testing.T) { testRestart(t, mode) })
	}
}

func testRestart(t *testing.T, mode string) {
	e := newEnv(t, mode, nil, false)
	ctx := testCtx(t, 3*time.Minute)

	// Old flow 1: a bumped keep-alive connection with one request done.
	raw, err := e.Clients[0].Dial(ctx, "tcp", demo.HostApp+":443")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	kc := tls.Client(raw, &tls.Config{ServerName: demo.HostApp, RootCAs: e.Clients[0].Roots})
	kr := bufio.NewReader(kc)
	if err := roundTrip(kc, kr); err != nil {
		t.Fatalf("keep-alive request before the restart: %v", err)
	}
	// Old flow 2: a slow download in progress.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+demo.HostApp+"/slow?s=120", nil)
	resp, err := e.Clients[1].HTTPClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sr := bufio.NewReader(resp.Body)
	if _, err := sr.ReadString('\n'); err != nil {
		t.Fatalf("slow download: %v", err)
	}

	oldPID := e.App.PID()
	e.App.Kill()
	t.Logf("appliance pid %d killed", oldPID)
	if err := e.StartAppliance(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("appliance restarted as pid %d", e.App.PID())

	// New flows work from both VPCs: tunnels and steering came back.
	for i, c := range e.Clients {
		r := c.Get(ctx, "https://"+demo.HostApp+"/")
		if r.Err != nil || r.Status != 200 || r.Issuer != demo.ApplianceCAName {
			t.Fatalf("new flow from %s after restart: %v %d %q", c.Name, r.Err, r.Status, r.Issuer)
		}
		if _, err := c.Ping(ctx, demo.AddrEcho); err != nil {
			t.Fatalf("ping from %s after restart: %v", c.Name, err)
		}
		_, err := e.Records.Wait(ctx, 1, func(rec *demo.Record) bool {
			return rec.Of(r) && rec.EndpointID == demo.EndpointOf([]uint64{demo.EndpointA, demo.EndpointB}[i])
		})
		if err != nil {
			t.Fatalf("record after restart: %v", err)
		}
	}
	waitFor(t, time.Minute, "health 200 with both tunnels", func() (bool, string) {
		code, rep, err := e.Health(ctx)
		if err != nil {
			return false, err.Error()
		}
		st := fmt.Sprint(rep.Checks["steer"].Stats)
		return code == 200 && contains(st, "tunnels:2"), fmt.Sprintf("%d %s", code, st)
	})

	// The old keep-alive connection is refused: the next request fails
	// (reset, EOF or alert) well before the deadline instead of hanging.
	_ = kc.SetDeadline(time.Now().Add(60 * time.Second))
	start := time.Now()
	err = roundTrip(kc, kr)
	if err == nil {
		t.Fatal("the pre-restart keep-alive connection still answered")
	}
	if isTimeout(err) {
		t.Fatalf("the pre-restart keep-alive connection hung (%v) instead of being refused", err)
	}
	t.Logf("old keep-alive connection ended after %s: %v", time.Since(start).Round(time.Millisecond), err)

	// The old download ends too (the client's keep-alive probe or next
	// ACK meets no socket and is answered with a reset).
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, sr)
		done <- err
	}()
	select {
	case err := <-done:
		t.Logf("old download ended: %v", err)
		if err == nil {
			t.Error("old download completed normally across a crash; expected it to be cut")
		}
	case <-time.After(90 * time.Second):
		t.Fatal("the pre-restart download neither continued nor ended within 90s")
	}
}

func roundTrip(c net.Conn, r *bufio.Reader) error {
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+demo.HostApp+"\r\n\r\n"); err != nil {
		return err
	}
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	resp, err := http.ReadResponse(r, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
