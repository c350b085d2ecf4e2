//go:build linux

package flowlog

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

var netErrClosed = net.ErrClosed

// nfnetlink_log (linux/netfilter/nfnetlink_log.h).
const (
	nfnlSubsysULOG     = 4
	nfulnlMsgPacket    = 0
	nfulnlMsgConfig    = 1
	nfulaCfgCmd        = 1
	nfulaCfgMode       = 2
	nfulaCfgTimeout    = 4
	nfulaCfgQThresh    = 5
	nfulnlCfgCmdBind   = 1
	nfulnlCopyPacket   = 2
	nfulaPacketHdr     = 1
	nfulaTimestamp     = 3
	nfulaIfindexIndev  = 4
	nfulaPayload       = 9
	nfulaPrefix        = 10
	nflogCopyRange     = 128 // enough for the IP and transport headers
	nflogQueueThresh   = 32  // packets batched per netlink message...
	nflogFlushTimeoutC = 10  // ...or every 100 ms (1/100 s units)
)

// dialNFLOG binds a netlink socket in the namespace to NFLOG group and
// asks for the first bytes of each packet.
func (l *Logger) dialNFLOG(group uint16) (*netlink.Conn, error) {
	var c *netlink.Conn
	err := l.inNS(func() (err error) {
		c, err = netlink.Dial(unix.NETLINK_NETFILTER, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	setReadBuffer(c, l.cfg.ReadBuffer)
	cfg := func(attrs []netlink.Attribute) error {
		b, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			return err
		}
		hdr := []byte{unix.AF_UNSPEC, 0, byte(group >> 8), byte(group)} // nfgenmsg, res_id = group (big endian)
		_, err = c.Execute(netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysULOG<<8 | nfulnlMsgConfig), Flags: netlink.Request | netlink.Acknowledge},
			Data:   append(hdr, b...),
		})
		return err
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, nflogCopyRange)
	mode[4] = nfulnlCopyPacket
	if err := cfg([]netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}}}); err != nil {
		c.Close()
		return nil, err
	}
	thresh, timeout := make([]byte, 4), make([]byte, 4)
	binary.BigEndian.PutUint32(thresh, nflogQueueThresh)
	binary.BigEndian.PutUint32(timeout, nflogFlushTimeoutC)
	if err := cfg([]netlink.Attribute{{Type: nfulaCfgMode, Data: mode}, {Type: nfulaCfgQThresh, Data: thresh}, {Type: nfulaCfgTimeout, Data: timeout}}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (l *Logger) readNFLOG(ctx context.Context) {
	l.receive(ctx, l.nfl, &l.c.nflogOverruns, "nflog", l.nflogPackets)
}

// nflogPackets turns the packets the network policy denied into records.
func (l *Logger) nflogPackets(msgs []netlink.Message) {
	for _, m := range msgs {
		if m.Header.Type != netlink.HeaderType(nfnlSubsysULOG<<8|nfulnlMsgPacket) {
			continue
		}
		r, ok := l.deniedRecord(m.Data)
		if !ok {
			l.c.decodeErrors.Add(1)
			continue
		}
		if !l.admitDenied(r.Client.Addr()) {
			continue
		}
		l.enqueue(r)
	}
}

// deniedRecord decodes one NFLOG packet message (nfgenmsg + attributes).
func (l *Logger) deniedRecord(data []byte) (Record, bool) {
	if len(data) < 4 {
		return Record{}, false
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return Record{}, false
	}
	ad.ByteOrder = binary.BigEndian
	r := Record{Type: TypeDenied, InstanceID: l.instanceID, Action: "deny", ICMPType: -1}
	var payload []byte
	var prefix string
	for ad.Next() {
		switch ad.Type() {
		case nfulaPrefix:
			prefix = strings.TrimRight(string(ad.Bytes()), "\x00")
		case nfulaIfindexIndev:
			if ep, ok := l.src.EndpointOfIfIndex(int(ad.Uint32())); ok {
				r.EndpointID = ep
			}
		case nfulaPayload:
			payload = ad.Bytes()
		case nfulaTimestamp:
			b := ad.Bytes()
			if len(b) == 16 {
				r.Start = time.Unix(int64(binary.BigEndian.Uint64(b)), int64(binary.BigEndian.Uint64(b[8:]))*1000)
			}
		}
	}
	if ad.Err() != nil {
		return Record{}, false
	}
	// "np:<rule>@<policy version>" (steer.NFLOGPrefix); without a
	// version (a table of an older build), the version in force.
	rule, ok := strings.CutPrefix(prefix, "np:")
	rule, version, hasVersion := strings.Cut(rule, "@")
	if !ok || !validName(rule) {
		rule = "unknown"
	}
	r.Rule = rule
	if hasVersion && validName(version) {
		r.PolicyVersion = version
	} else {
		r.PolicyVersion = l.src.PolicyVersion()
	}
	if !parsePacket(payload, &r) {
		return Record{}, false
	}
	if r.Start.IsZero() {
		r.Start = time.Now()
	}
	r.End = r.Start
	r.PacketsOut = 1
	return r, true
}

func validName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// parsePacket fills the 5-tuple (and ICMP type/code, byte count) from the
// IP packet's first bytes.
func parsePacket(p []byte, r *Record) bool {
	if len(p) < 1 {
		return false
	}
	var l4 []byte
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return false
		}
		ihl := int(p[0]&0xf) * 4
		if ihl < 20 || len(p) < ihl {
			return false
		}
		r.Protocol = p[9]
		src, _ := netip.AddrFromSlice(p[12:16])
		dst, _ := netip.AddrFromSlice(p[16:20])
		r.Client, r.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		r.BytesOut = uint64(binary.BigEndian.Uint16(p[2:]))
		if binary.BigEndian.Uint16(p[6:])&0x1fff != 0 {
			return true // a later fragment: no transport header
		}
		l4 = p[ihl:]
	case 6:
		if len(p) < 40 {
			return false
		}
		r.Protocol = p[6]
		src, _ := netip.AddrFromSlice(p[8:24])
		dst, _ := netip.AddrFromSlice(p[24:40])
		r.Client, r.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		r.BytesOut = uint64(binary.BigEndian.Uint16(p[4:])) + 40
		l4 = p[40:]
	default:
		return false
	}
	switch r.Protocol {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_SCTP:
		if len(l4) >= 4 {
			r.Client = netip.AddrPortFrom(r.Client.Addr(), binary.BigEndian.Uint16(l4))
			r.Dst = netip.AddrPortFrom(r.Dst.Addr(), binary.BigEndian.Uint16(l4[2:]))
		}
	case unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6:
		if len(l4) >= 2 {
			r.ICMPType, r.ICMPCode = int(l4[0]), int(l4[1])
		}
	}
	return true
}
