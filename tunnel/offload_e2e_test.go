//go:build linux

package tunnel_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
)

// TestOffloadBulkIntegrity pushes bulk TCP both ways and a burst of UDP
// datagrams through the daemon with offloads on (GRO before gwi-, GSO
// split after gwo-) and requires every byte back intact and in order, no
// malformed or oversized super-packet, and clean returns at the simulated
// GWLB. Whether packets were actually merged depends on timing, so the
// merge factor is logged, not asserted.
func TestOffloadBulkIntegrity(t *testing.T) { eachDatapath(t, testOffloadBulkIntegrity) }

func testOffloadBulkIntegrity(t *testing.T, dp string) {
	h := newHarness(t, dp, []uint64{ep0}, func(c *tunnel.Config) {
		c.Workers, c.Batch, c.Offload = 1, 64, true
	})
	e0 := h.topo.Endpoints[0]

	c := tcpEcho(t, e0, 8081)
	c.SetDeadline(time.Now().Add(120 * time.Second))
	payload := make([]byte, 6<<20)
	for i := range payload {
		payload[i] = byte(i*31 + i>>11)
	}
	werr := make(chan error, 1)
	go func() { _, err := c.Write(payload); werr <- err }()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("tcp echo differs")
	}

	// UDP: a burst of one flow's datagrams, each checked byte for byte.
	var srv *net.UDPConn
	in(t, e0.Server, func() (err error) {
		srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: gwlbsim.ServerAddr.AsSlice(), Port: 5301})
		return err
	})
	defer srv.Close()
	srv.SetReadBuffer(8 << 20)
	cl := udpClient(t, e0, 41000, 5301)
	const n, size = 3000, 1200
	dgram := func(i int) []byte {
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(i + j*7)
		}
		b[0], b[1] = byte(i>>8), byte(i)
		return b
	}
	go func() {
		for i := 0; i < n; i++ {
			cl.Write(dgram(i))
		}
	}()
	seen := make([]bool, n)
	received, last := 0, -1
	buf := make([]byte, 9000)
	for received < n {
		srv.SetReadDeadline(time.Now().Add(3 * time.Second))
		k, err := srv.Read(buf)
		if err != nil {
			break // losses are possible on a loaded box; corruption is not
		}
		i := int(buf[0])<<8 | int(buf[1])
		if i >= n || seen[i] || !bytes.Equal(buf[:k], dgram(i)) {
			t.Fatalf("datagram %d (%d bytes) corrupt or duplicated", i, k)
		}
		if i < last {
			t.Fatalf("datagram %d after %d: reordered", i, last)
		}
		seen[i], last = true, i
		received++
	}
	if received == 0 {
		t.Fatal("no UDP datagram arrived")
	}
	s := h.d.Stats()
	for _, r := range []string{"return_gso_malformed", "return_gso_over_mtu", "tun_write", "send_error"} {
		if s.Drops[r] != 0 {
			t.Errorf("drops %s = %d", r, s.Drops[r])
		}
	}
	simClean(t, h.sim.Stats())
	ts := s.Tunnels[0]
	t.Logf("udp %d/%d delivered; in: %d packets in %d tun writes, out: %d packets from %d tun reads",
		received, n, ts.PacketsIn, ts.TunWrites, ts.PacketsOut, ts.TunReads)
}
