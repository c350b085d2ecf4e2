package e2e

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// clientHello returns the first flight of a Go TLS client for name: one
// ClientHello record.
func clientHello(t *testing.T, name string) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c2.Close()
	go func() {
		tls.Client(c1, &tls.Config{ServerName: name}).Handshake()
		c1.Close()
	}()
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 16<<10)
	n, err := c2.Read(buf)
	if err != nil || n < 5 || buf[0] != 22 {
		t.Fatalf("capturing a ClientHello: %d bytes, %v", n, err)
	}
	return buf[:n]
}

// TestSpliceNotTLSThroughTunnel: from a client VPC, through GWLB and the
// appliance, a hostile client sends a valid ClientHello naming the spliced
// bank, reads the bank's TLS answer, then sends plain HTTP instead of TLS
// records. The appliance closes the connection, and the record says
// not-tls, sent by the client, after the splice rule.
func TestSpliceNotTLSThroughTunnel(t *testing.T) {
	e := newEnv(t, steer.EgressNAT, nil, false)
	ctx := testCtx(t, time.Minute)
	c, err := e.Clients[0].Dial(ctx, "tcp", demo.HostBank+":443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(clientHello(t, demo.HostBank)); err != nil {
		t.Fatal(err)
	}
	// The bank's ServerHello comes back through the splice.
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil || hdr[0] != 22 {
		t.Fatalf("no ServerHello through the splice: % x %v", hdr, err)
	}
	if _, err := io.WriteString(c, "POST /exfil HTTP/1.1\r\nHost: "+demo.HostBank+"\r\nContent-Length: 6\r\n\r\nsecret"); err != nil {
		t.Fatal(err)
	}
	// The rest of the bank's flight may still arrive; then the close.
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err = io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the connection stayed open after non-TLS bytes")
	}
	recs, err := e.Records.Wait(testCtx(t, 20*time.Second), 1, func(r *demo.Record) bool {
		return r.Rule == "not-tls" && r.SNI == demo.HostBank
	})
	if err != nil {
		t.Fatalf("not-tls record: %v", err)
	}
	r := recs[0]
	if r.Action != "deny" || !strings.Contains(r.UpstreamError, "client sent not-tls") || !strings.Contains(r.UpstreamError, demo.RuleSplice) {
		t.Errorf("record %s", r.Raw)
	}
	checkAllRecords(t, e)
}
