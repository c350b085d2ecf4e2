//go:build linux

package flowlog

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"golang.org/x/sys/unix"
)

// TestDeniedNFLOGPerSource: denied packets logged by the kernel (nftables
// "log group N prefix np:<rule>" then drop, as steer's deny rules do)
// become flow_denied records naming the rule, at most denied_per_source
// per source per summary_interval; the rest are counted as
// denied_suppressed in the flow_summary record.
func TestDeniedNFLOGPerSource(t *testing.T) {
	h := floodNS(t)
	const group, perSource, attempts = 4799, 5, 40
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	tb := c.AddTable(&nftables.Table{Name: "netpolicy_deny", Family: nftables.TableFamilyINet})
	ch := c.AddChain(&nftables.Chain{Name: "out", Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(10)},
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: group, Data: []byte("np:no-udp-10")},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := c.Flush(); err != nil {
		t.Fatalf("nft: %v", err)
	}
	cfg := DefaultConfig()
	cfg.DeniedPerSource = perSource
	// One interval for the whole burst (the per-source count restarts
	// with each); Close writes the summary.
	cfg.SummaryInterval = time.Minute
	cfg.InterimInterval = 0
	cfg.MarkBase, cfg.MarkMask, cfg.LogGroup = 0x47570000, 0xffff0000, group
	rec := &memRecorder{}
	l, err := newLogger(cfg, fakeSource{}, rec, "i-denied", nil, nil, int(h))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := inns.Do(h, func() error {
		for i := 0; i < attempts; i++ {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 30000 + i}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10})
			if err != nil {
				return err
			}
			c.Write([]byte("x")) // dropped: EPERM is expected
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for st := l.Stats(); int(st.Denied+st.DeniedSuppressed) < attempts; st = l.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v after %d denied attempts", st, attempts)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var denied, suppressed int
	rec.mu.Lock()
	for _, r := range rec.recs {
		switch r["record_type"] {
		case TypeDenied:
			denied++
			if r["rule"] != "no-udp-10" || r["action"] != "deny" || r["dst_port"] != 10.0 || r["protocol"] != "udp" || r["policy_version"] != "np-000000000001" {
				t.Errorf("denied record %v", r)
			}
		case TypeSummary:
			suppressed += int(r["denied_suppressed"].(float64))
		}
	}
	rec.mu.Unlock()
	t.Logf("%d denied attempts from one source: %d flow_denied records, %d counted as suppressed", attempts, denied, suppressed)
	if denied != perSource || suppressed != attempts-perSource {
		t.Fatalf("%d records and %d suppressed, want %d and %d; stats %+v", denied, suppressed, perSource, attempts-perSource, l.Stats())
	}
	if st := l.Stats(); st.DeniedSuppressed != attempts-perSource || st.Denied != perSource {
		t.Fatalf("stats %+v", st)
	}
}
