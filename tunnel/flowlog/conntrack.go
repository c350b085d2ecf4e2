//go:build linux

package flowlog

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// nfnlgrpConntrackDestroy is NFNLGRP_CONNTRACK_DESTROY.
const nfnlgrpConntrackDestroy = 3

// dialConntrackEvents opens a netfilter netlink socket in the namespace
// subscribed to conntrack destroy events. The events are decoded with
// ti-mo/conntrack; the receive loop is our own so that an overrun
// (ENOBUFS) is counted and reading goes on, where the library's listener
// would stop its worker.
func (l *Logger) dialConntrackEvents() (*netlink.Conn, error) {
	var c *netlink.Conn
	err := l.inNS(func() (err error) {
		c, err = netlink.Dial(unix.NETLINK_NETFILTER, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	setReadBuffer(c, l.cfg.ReadBuffer)
	if err := c.JoinGroup(nfnlgrpConntrackDestroy); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// setReadBuffer sets SO_RCVBUFFORCE (root or CAP_NET_ADMIN may exceed
// rmem_max), falling back to SO_RCVBUF.
func setReadBuffer(c *netlink.Conn, n int) {
	if rc, err := c.SyscallConn(); err == nil {
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n) })
		if serr == nil {
			return
		}
	}
	_ = c.SetReadBuffer(n)
}

func isClosed(err error) bool {
	var op *netlink.OpError
	if errors.As(err, &op) && op.Err != nil && op.Err.Error() == "use of closed file" {
		return true
	}
	return errors.Is(err, unix.EBADF) || errors.Is(err, netErrClosed)
}

func (l *Logger) readConntrack(ctx context.Context) {
	l.receive(ctx, l.ct, &l.c.ctOverruns, "conntrack", l.conntrackEvents)
}

// conntrackEvents turns destroy events of forwarded flows into records.
func (l *Logger) conntrackEvents(msgs []netlink.Message) {
	for _, m := range msgs {
		var ev conntrack.Event
		if err := ev.Unmarshal(m); err != nil || ev.Flow == nil {
			l.c.decodeErrors.Add(1)
			continue
		}
		if ev.Type != conntrack.EventDestroy {
			continue
		}
		if r, ok := l.flowRecord(ev.Flow, TypeFlow, time.Time{}); ok {
			l.enqueue(r)
		}
	}
}

// flowRecord makes the record of a conntrack flow, if it is a forwarded
// one of ours.
func (l *Logger) flowRecord(f *conntrack.Flow, typ string, now time.Time) (Record, bool) {
	o, rp := f.TupleOrig, f.TupleReply
	if !l.forwarded(f.Mark, f.Zone, o.Proto.Protocol, o.Proto.DestinationPort) {
		return Record{}, false
	}
	r := Record{
		Type:       typ,
		InstanceID: l.instanceID,
		Protocol:   o.Proto.Protocol,
		Client:     netip.AddrPortFrom(o.IP.SourceAddress, o.Proto.SourcePort),
		Dst:        netip.AddrPortFrom(o.IP.DestinationAddress, o.Proto.DestinationPort),
		Action:     "allow",
		PacketsOut: f.CountersOrig.Packets, BytesOut: f.CountersOrig.Bytes,
		PacketsIn: f.CountersReply.Packets, BytesIn: f.CountersReply.Bytes,
		Start: f.Timestamp.Start, End: f.Timestamp.Stop,
		ICMPType: -1,
	}
	if ep, ok := l.src.EndpointOfMark(f.Mark); ok {
		r.EndpointID = ep
	}
	// The rule that allowed the flow, as the kernel recorded it in the
	// conntrack mark when the flow began (not re-evaluated now: the
	// policy may have been reloaded, a domain's answers may have
	// changed).
	r.Rule, r.PolicyVersion, _ = l.src.RuleOfMark(f.Mark)
	// Masquerade: the reply goes to the translated source.
	if nat := netip.AddrPortFrom(rp.IP.DestinationAddress, rp.Proto.DestinationPort); rp.IP.DestinationAddress.IsValid() && nat != r.Client {
		r.NAT = nat
	}
	if o.Proto.ICMPv4 || o.Proto.ICMPv6 {
		r.ICMPType, r.ICMPCode = int(o.Proto.ICMPType), int(o.Proto.ICMPCode)
		r.Client = netip.AddrPortFrom(r.Client.Addr(), 0)
		r.Dst = netip.AddrPortFrom(r.Dst.Addr(), 0)
		r.NAT = netip.AddrPort{}
	}
	if f.ProtoInfo.TCP != nil {
		r.TCPState = tcpStateName(f.ProtoInfo.TCP.State)
	}
	if r.End.IsZero() {
		if now.IsZero() {
			now = time.Now()
		}
		r.End = now
	}
	return r, true
}

// interimLoop records, every interim_interval, the flows of ours that
// have been alive longer than it (cumulative counters so far).
func (l *Logger) interimLoop(ctx context.Context) {
	defer l.wg.Done()
	var c *conntrack.Conn
	err := l.inNS(func() (err error) {
		c, err = conntrack.Dial(nil)
		return err
	})
	if err != nil {
		l.readFailed("conntrack dump", err)
		return
	}
	defer c.Close()
	t := time.NewTicker(l.cfg.InterimInterval)
	defer t.Stop()
	filter := conntrack.NewFilter().Mark(l.cfg.MarkBase).MarkMask(l.cfg.MarkMask)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		flows, err := c.DumpFilter(filter, nil)
		if err != nil {
			l.log.Warn("flow records: conntrack dump for interim records", "err", err)
			continue
		}
		now := time.Now()
		for i := range flows {
			f := &flows[i]
			if f.Timestamp.Start.IsZero() || now.Sub(f.Timestamp.Start) < l.cfg.InterimInterval {
				continue
			}
			f.Timestamp.Stop = time.Time{}
			if r, ok := l.flowRecord(f, TypeInterim, now); ok {
				l.enqueue(r)
			}
		}
	}
}
