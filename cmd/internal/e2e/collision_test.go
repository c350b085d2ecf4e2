package e2e

import (
	"context"
	"crypto/tls"
	be "encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel"
	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// TestSameTupleTwoEndpoints: two endpoints carry the same client address
// and port to the same server at the same time (overlapping VPCs). The
// appliance holds one socket per 4-tuple, so only one of them can be
// intercepted at a time; the other endpoint's packets must not disturb it.
//
// This is what made TestParallelHTTPS lose a connection about one run in
// three: the two client namespaces share one kernel, whose ephemeral port
// choice and initial sequence number depend only on the addresses and
// ports (not on the namespace), so two simultaneous connects from the two
// VPCs often got the same port, and sometimes SYNs a few microseconds
// apart. The second SYN, inside the receive window of the first one's
// half-open connection, made the kernel reset that connection, and the
// first client's next packet got RST. Here it is made to happen every
// time: A's handshake is held half-open at the appliance (only SYNs leave
// A's namespace) and B sends a SYN with the same 4-tuple inside A's window.
// A's request must then succeed, the drop be counted (tuple_collision),
// and B get the same tuple once A is done. In both egress modes (in tunnel
// mode the proxy's upstream connection carries the same 4-tuple too, in
// its own conntrack zone), and with both datapaths (the guard is in
// steering, after either has written the packet into gwi-*).
func TestSameTupleTwoEndpoints(t *testing.T) {
	for _, c := range []struct{ mode, datapath string }{
		{steer.EgressNAT, tunnel.DatapathAuto},
		{steer.EgressTunnel, tunnel.DatapathUserspace},
	} {
		t.Run(c.mode+"/"+c.datapath, func(t *testing.T) {
			sameTupleTwoEndpoints(t, c.mode, func(cfg *config.Config) { cfg.Tunnel.Datapath = c.datapath })
		})
	}
}

func sameTupleTwoEndpoints(t *testing.T, mode string, modify func(*config.Config)) {
	e := newEnv(t, mode, modify, false)
	ctx := testCtx(t, 2*time.Minute)
	a, b := e.Clients[0], e.Clients[1]
	// Outside the ephemeral range, so no other connection of the test
	// takes it.
	src := netip.AddrPortFrom(gwlbsim.ClientAddr, uint16(20000+rand.IntN(10000)))
	dst := netip.AddrPortFrom(demo.AddrApp, 443)

	syn, err := watchSYN(a.NS, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	release, err := onlySYNs(a.NS, src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	done := make(chan demo.Result, 1)
	go func() { done <- getFromPort(ctx, a, src) }()
	var isn uint32
	select {
	case isn = <-syn:
	case <-time.After(10 * time.Second):
		t.Fatal("A's SYN not seen in its namespace")
	}
	// A's SYN must have reached the appliance (its request socket exists)
	// before B's arrives; the SYN-ACK coming back to A says so.
	time.Sleep(500 * time.Millisecond)
	if err := sendSYN(b.NS, src, dst, isn+1000); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	release()
	var r demo.Result
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("A's request did not finish")
	}
	if r.Err != nil || r.Status != 200 || r.Issuer != demo.ApplianceCAName {
		t.Fatalf("A (%s, B's SYN with the same 4-tuple in its window): err=%v status=%d issuer=%q", src, r.Err, r.Status, r.Issuer)
	}
	n, err := e.SteerCounter(ctx, "tuple_collision")
	if err != nil {
		t.Fatal(err)
	}
	if n < 1 {
		t.Errorf("tuple_collision = %v, want >= 1 (B's SYN dropped)", n)
	}
	// The tuple is free again: B gets it (conntrack replaces A's closed
	// entry and gives it B's tunnel).
	//
	// In tunnel mode the proxy's upstream connection for A used the same
	// 4-tuple (the client's address and port, transparently). When the
	// proxy closed that side first, the appliance holds it in TIME_WAIT
	// for 60 s and the upstream dial for B fails (502) until it expires:
	// a known limit of transparent upstreams, seen once under CI load.
	// B retries as a client would; it must be served within TIME_WAIT.
	rb := getFromPort(ctx, b, src)
	for deadline := time.Now().Add(70 * time.Second); mode == steer.EgressTunnel && rb.Status == 502 && time.Now().Before(deadline); {
		t.Logf("B (%s after A): 502 (A's upstream tuple still in TIME_WAIT?); retrying in 2s", src)
		time.Sleep(2 * time.Second)
		rb = getFromPort(ctx, b, src)
	}
	if rb.Err != nil || rb.Status != 200 || rb.Issuer != demo.ApplianceCAName {
		t.Fatalf("B (%s after A): err=%v status=%d issuer=%q", src, rb.Err, rb.Status, rb.Issuer)
	}
	t.Logf("A and B both served from %s; tuple_collision %v", src, n)
}

// TCP header flags.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

// getFromPort fetches https://app.demo.test/ from c's namespace with the
// local address src.
func getFromPort(ctx context.Context, c *demo.Client, src netip.AddrPort) demo.Result {
	res := demo.Result{Local: src}
	d := &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(src)}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.NS.Dial(ctx, d, network, netip.AddrPortFrom(demo.AddrApp, 443).String())
		},
		TLSClientConfig:   &tls.Config{RootCAs: c.Roots},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+demo.HostApp+"/", nil)
	if err != nil {
		res.Err = err
		return res
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		res.Err = err
		return res
	}
	defer resp.Body.Close()
	res.Status = resp.StatusCode
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		res.Issuer = resp.TLS.PeerCertificates[0].Issuer.CommonName
	}
	return res
}

// watchSYN reports the sequence number of the first SYN from src to dst
// that leaves ns (an AF_PACKET socket, cooked: IP packets).
func watchSYN(ns *inns.NS, src, dst netip.AddrPort) (<-chan uint32, error) {
	fd := -1
	proto := int((unix.ETH_P_ALL&0xff)<<8 | unix.ETH_P_ALL>>8) // htons
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("capture socket in %s: %w", ns.Name, err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	out := make(chan uint32, 1)
	go func() {
		defer unix.Close(fd)
		buf := make([]byte, 2048)
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			p := buf[:n]
			if len(p) < 40 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP {
				continue
			}
			ihl := int(p[0]&0xf) * 4
			if len(p) < ihl+20 {
				continue
			}
			s, _ := netip.AddrFromSlice(p[12:16])
			d, _ := netip.AddrFromSlice(p[16:20])
			tcp := p[ihl:]
			if netip.AddrPortFrom(s, be.BigEndian.Uint16(tcp[0:])) != src ||
				netip.AddrPortFrom(d, be.BigEndian.Uint16(tcp[2:])) != dst ||
				tcp[13]&(tcpSYN|tcpACK) != tcpSYN {
				continue
			}
			out <- be.BigEndian.Uint32(tcp[4:])
			return
		}
	}()
	return out, nil
}

// onlySYNs drops, in ns's output, every TCP packet from src that is not a
// SYN: the connection's handshake completes on the client but stays
// half-open (a request socket) at the appliance. release removes the
// table; it may be called more than once.
func onlySYNs(ns *inns.NS, src netip.AddrPort) (release func(), err error) {
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Handle())))
	if err != nil {
		return nil, err
	}
	table := &nftables.Table{Name: fmt.Sprintf("resets_hold_%d", rand.Uint32()), Family: nftables.TableFamilyINet}
	conn.AddTable(table)
	ch := conn.AddChain(&nftables.Chain{Name: "out", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	conn.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(src.Port())},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpSYN}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("nftables in %s: %w", ns.Name, err)
	}
	var released bool
	return func() {
		if released {
			return
		}
		released = true
		conn.DelTable(table)
		_ = conn.Flush()
	}, nil
}

// sendSYN sends one SYN from src to dst with sequence number seq out of
// ns (a raw socket: no socket of ns's own owns the tuple).
func sendSYN(ns *inns.NS, src, dst netip.AddrPort, seq uint32) error {
	fd := -1
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		return fmt.Errorf("raw socket in %s: %w", ns.Name, err)
	}
	defer unix.Close(fd)
	p := make([]byte, 40)
	p[0], p[8], p[9] = 0x45, 64, unix.IPPROTO_TCP
	be.BigEndian.PutUint16(p[2:], 40)
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:], s4[:])
	copy(p[16:], d4[:])
	csum.IPv4Header(p[:20])
	tcp := p[20:]
	be.BigEndian.PutUint16(tcp[0:], src.Port())
	be.BigEndian.PutUint16(tcp[2:], dst.Port())
	be.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12], tcp[13] = 5<<4, tcpSYN
	be.BigEndian.PutUint16(tcp[14:], 64240)
	pseudo := make([]byte, 12)
	copy(pseudo, p[12:20])
	pseudo[9] = unix.IPPROTO_TCP
	be.BigEndian.PutUint16(pseudo[10:], uint16(len(tcp)))
	be.BigEndian.PutUint16(tcp[16:], ^csum.Fold(csum.Sum(tcp, csum.Sum(pseudo, 0))))
	return unix.Sendto(fd, p, 0, &unix.SockaddrInet4{Addr: d4})
}
