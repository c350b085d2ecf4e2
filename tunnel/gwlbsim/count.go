//go:build linux

package gwlbsim

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// returnCounter counts the datagrams that come back to the benchmark (the
// GENEVE returns in the GWLB namespace, the plain packets in the sink) at
// the ingress hook of the link they arrive on, and drops them there. A
// socket would cost the kernel an IP receive, a socket lookup and a queue
// per datagram and the receiver a copy: on the generator's CPU (where the
// benchmark steers that link's receive work) that work competed with
// sending and capped the plain-forwarding baseline near 400 kpps. The
// counting is two nftables rules in a table of the netdev family:
// datagrams of the expected IP length, and any others to the port (a
// wrong length is a wrong return).
type returnCounter struct {
	conn  *nftables.Conn
	table *nftables.Table
	chain *nftables.Chain
}

func newReturnCounter(ns *NS, dev string, port, ipLen uint16) (*returnCounter, error) {
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Handle())))
	if err != nil {
		return nil, fmt.Errorf("gwlbsim bench: nftables in %s: %w", ns.Name, err)
	}
	c := &returnCounter{conn: conn}
	c.table = conn.AddTable(&nftables.Table{Family: nftables.TableFamilyNetdev, Name: "gwlbsim_bench"})
	prio := nftables.ChainPriorityFilter
	c.chain = conn.AddChain(&nftables.Chain{Name: "count", Table: c.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: prio, Device: dev})
	be16 := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
	match := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(unix.ETH_P_IP)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(port)},
	}
	good := append(append([]expr.Any{}, match...),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(ipLen)},
		&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	bad := append(append([]expr.Any{}, match...), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	conn.AddRule(&nftables.Rule{Table: c.table, Chain: c.chain, Exprs: good})
	conn.AddRule(&nftables.Rule{Table: c.table, Chain: c.chain, Exprs: bad})
	if err := conn.Flush(); err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("gwlbsim bench: counting rules on %s in %s: %w", dev, ns.Name, err)
	}
	return c, nil
}

// read returns the datagrams counted so far: of the expected length, and
// of any other.
func (c *returnCounter) read() (good, bad uint64, err error) {
	rules, err := c.conn.GetRules(c.table, c.chain)
	if err != nil {
		return 0, 0, fmt.Errorf("gwlbsim bench: read counters: %w", err)
	}
	var n []uint64
	for _, r := range rules {
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				n = append(n, ctr.Packets)
			}
		}
	}
	if len(n) != 2 {
		return 0, 0, fmt.Errorf("gwlbsim bench: %d counters in the counting chain", len(n))
	}
	return n[0], n[1], nil
}

func (c *returnCounter) Close() error {
	c.conn.DelTable(c.table)
	err := c.conn.Flush()
	c.conn.CloseLasting()
	return err
}
