//go:build linux

package flowlog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// memRecorder keeps shipped records in memory.
type memRecorder struct {
	mu   sync.Mutex
	recs []map[string]any
	bad  int
}

func (m *memRecorder) Ship(_ time.Time, b []byte) error {
	var v map[string]any
	err := json.Unmarshal(b, &v)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.bad++
		return nil
	}
	m.recs = append(m.recs, v)
	return nil
}

// totals counts the flows in flow records and in summaries.
func (m *memRecorder) totals() (flows, summarised int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.recs {
		switch r["record_type"] {
		case TypeFlow:
			flows++
		case TypeSummary:
			summarised += int(r["flows"].(float64))
		}
	}
	return
}

// floodNS is a namespace whose locally generated UDP to port 9 gets
// conntrack mark 0x47570201 (tunnel slot 1, rule id 1), as forwarded tunnel flows do.
func floodNS(t *testing.T) netns.NsHandle {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nftables, conntrack netlink)")
	}
	b := make([]byte, 3)
	rand.Read(b)
	name := "netpolicy-fl-" + hex.EncodeToString(b)
	ns, err := inns.New(name) // lo up
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	h := ns.Handle()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	tb := c.AddTable(&nftables.Table{Name: "netpolicy_flood", Family: nftables.TableFamilyINet})
	ch := c.AddChain(&nftables.Chain{Name: "out", Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(9)},
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(0x47570201)}, // slot 1, rule id 1 (steer's layout with max_tunnels 256)
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}})
	if err := c.Flush(); err != nil {
		t.Fatalf("nft: %v", err)
	}
	return h
}

// TestFloodRecordsOrSummaries: a burst of thousands of short flows ends in
// flow records or counted summaries, never blocking; conntrack's own table
// (a dump filtered by the tunnel mark right after the burst) is the
// reference for how many flows there were. Netlink overruns, if the
// machine is too busy to keep up, are counted and turn Health red.
func TestFloodRecordsOrSummaries(t *testing.T) {
	h := floodNS(t)
	if err := inns.Do(h, func() error {
		return os.WriteFile("/proc/sys/net/netfilter/nf_conntrack_udp_timeout", []byte("3\n"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.MaxRecordsPerSecond = 1000 // below the burst: part of it must be summarised
	cfg.SummaryInterval = time.Second
	cfg.QueueLength = 256
	cfg.InterimInterval = 0
	rec := &memRecorder{}
	cfg.MarkBase, cfg.MarkMask = 0x47570000, 0xffff0000
	src := fakeSource{}
	l, err := newLogger(cfg, src, rec, "i-flood", nil, nil, int(h))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	const n = 5000
	start := time.Now()
	if err := inns.Do(h, func() error {
		for i := 0; i < n; i++ {
			// A distinct source port per flow: n conntrack entries.
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 20000 + i}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
			if err != nil {
				return err
			}
			c.Write([]byte("x"))
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	burst := time.Since(start)
	var ref int
	if err := inns.Do(h, func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		flows, err := c.DumpFilter(conntrack.NewFilter().Mark(0x47570201).MarkMask(0xffffffff), nil)
		ref = len(flows)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("burst of %d flows took %s; conntrack holds %d of them", n, burst, ref)
	if ref < n*99/100 {
		t.Fatalf("conntrack holds %d flows of %d sent (expired already? machine too slow)", ref, n)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		flows, summ := rec.totals()
		st := l.Stats()
		if flows+summ >= ref {
			t.Logf("records %d + summarised %d = %d (reference %d); stats %+v", flows, summ, flows+summ, ref, st)
			if flows+summ != ref {
				t.Fatalf("more flows recorded than conntrack had")
			}
			if summ == 0 {
				t.Fatal("nothing summarised although the burst exceeded max_records_per_second")
			}
			if uint64(summ) != st.QueueFull+st.RateLimited {
				t.Fatalf("summaries count %d flows, counters %d", summ, st.QueueFull+st.RateLimited)
			}
			break
		}
		if time.Now().After(deadline) {
			if st.ConntrackOverruns > 0 {
				// Events lost in the kernel: allowed only when counted
				// and visible in Health.
				if l.Health() == nil {
					t.Fatalf("overruns %d but Health is green", st.ConntrackOverruns)
				}
				t.Logf("machine too busy: %d overruns counted; records %d + summarised %d of %d", st.ConntrackOverruns, flows, summ, ref)
				break
			}
			t.Fatalf("records %d + summarised %d < reference %d and no overrun counted; stats %+v", flows, summ, ref, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if rec.bad > 0 {
		t.Fatalf("%d records were not JSON", rec.bad)
	}
}
