// Package mirrortest decodes and checks what the decryption mirror emits:
// tests of package mirror and of the proxy use it to reassemble mirrored
// connections with a strict model of both TCP ends (no gopacket).
package mirrortest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/gwlbproxy/gwlbproxy/tunnel/csum"
)

// TCP flags.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// Packet is one decoded frame.
type Packet struct {
	SrcMAC, DstMAC [6]byte
	Src, Dst       netip.AddrPort
	Seq, Ack       uint32
	Flags          byte
	Window         uint16
	Options        []byte
	Payload        []byte
	IPLen          int // IP packet length (what the MTU bounds)
}

// Parse decodes an Ethernet + IPv4/IPv6 + TCP frame and checks its IPv4
// header checksum, lengths and TCP checksum.
func Parse(f []byte) (Packet, error) {
	var p Packet
	if len(f) < 14+20 {
		return p, fmt.Errorf("short frame (%d bytes)", len(f))
	}
	copy(p.DstMAC[:], f[0:6])
	copy(p.SrcMAC[:], f[6:12])
	ip := f[14:]
	var tcp []byte
	var pseudo uint64
	switch et := binary.BigEndian.Uint16(f[12:]); et {
	case 0x0800:
		if ip[0] != 0x45 || ip[9] != 6 {
			return p, fmt.Errorf("ipv4 header %x: want no options, TCP", ip[:20])
		}
		if csum.Fold(csum.Sum(ip[:20], 0)) != 0xffff {
			return p, errors.New("bad IPv4 header checksum")
		}
		tot := int(binary.BigEndian.Uint16(ip[2:]))
		if tot != len(ip) || tot < 40 {
			return p, fmt.Errorf("ipv4 total length %d, frame carries %d", tot, len(ip))
		}
		p.IPLen = tot
		s, _ := netip.AddrFromSlice(ip[12:16])
		d, _ := netip.AddrFromSlice(ip[16:20])
		tcp = ip[20:tot]
		pseudo = csum.Sum(ip[12:20], 6+uint64(len(tcp)))
		p.Src, p.Dst = netip.AddrPortFrom(s, binary.BigEndian.Uint16(tcp[0:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(tcp[2:]))
	case 0x86dd:
		if len(ip) < 60 || ip[0]>>4 != 6 || ip[6] != 6 {
			return p, errors.New("ipv6 header: want TCP with no extension headers")
		}
		pl := int(binary.BigEndian.Uint16(ip[4:]))
		if 40+pl != len(ip) {
			return p, fmt.Errorf("ipv6 payload length %d, frame carries %d", pl, len(ip)-40)
		}
		p.IPLen = 40 + pl
		s, _ := netip.AddrFromSlice(ip[8:24])
		d, _ := netip.AddrFromSlice(ip[24:40])
		tcp = ip[40:]
		pseudo = csum.Sum(ip[8:40], 6+uint64(len(tcp)))
		p.Src, p.Dst = netip.AddrPortFrom(s, binary.BigEndian.Uint16(tcp[0:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(tcp[2:]))
	default:
		return p, fmt.Errorf("ethertype %#x", et)
	}
	if csum.Fold(csum.Sum(tcp, pseudo)) != 0xffff {
		return p, errors.New("bad TCP checksum")
	}
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return p, fmt.Errorf("tcp data offset %d", off)
	}
	p.Seq, p.Ack = binary.BigEndian.Uint32(tcp[4:]), binary.BigEndian.Uint32(tcp[8:])
	p.Flags, p.Window = tcp[13], binary.BigEndian.Uint16(tcp[14:])
	p.Options, p.Payload = tcp[20:off], tcp[off:]
	return p, nil
}

// Conversation is one reassembled mirrored connection.
type Conversation struct {
	Client, Server     netip.AddrPort
	ToServer, ToClient []byte
	End                string // "fin", "rst" or "" (still open)
	Packets            int
}

// Reassemble replays the frames of one connection (client to server)
// through a strict model of both TCP ends: SYN (with options), SYN-ACK,
// ACK; then every segment in order with ACK set, seq = the sender's next
// byte, ack = the peer's next byte; FIN from both sides and a final ACK,
// or RST from the client. Any deviation, an IP packet above mtu or a
// packet after the end is an error.
func Reassemble(frames [][]byte, client, server netip.AddrPort, mtu int) (Conversation, error) {
	c := Conversation{Client: client, Server: server}
	var cnext, snext uint32
	state := "closed"
	var cFin, sFin bool
	for i, f := range frames {
		p, err := Parse(f)
		if err != nil {
			return c, fmt.Errorf("packet %d: %w", i, err)
		}
		if p.IPLen > mtu {
			return c, fmt.Errorf("packet %d: IP length %d > mtu %d", i, p.IPLen, mtu)
		}
		if p.DstMAC[0]&1 != 0 {
			return c, fmt.Errorf("packet %d: multicast destination MAC", i)
		}
		c.Packets++
		fromClient := p.Src == client && p.Dst == server
		if !fromClient && !(p.Src == server && p.Dst == client) {
			return c, fmt.Errorf("packet %d: 5-tuple %v -> %v is not %v <-> %v", i, p.Src, p.Dst, client, server)
		}
		switch state {
		case "closed":
			if !fromClient || p.Flags != SYN || len(p.Payload) != 0 || len(p.Options) == 0 {
				return c, fmt.Errorf("packet %d: want client SYN with options, got flags %#x", i, p.Flags)
			}
			cnext, state = p.Seq+1, "syn"
			continue
		case "syn":
			if fromClient || p.Flags != SYN|ACK || p.Ack != cnext {
				return c, fmt.Errorf("packet %d: want SYN-ACK acking %d, got flags %#x ack %d", i, cnext, p.Flags, p.Ack)
			}
			snext, state = p.Seq+1, "synack"
			continue
		case "synack":
			if !fromClient || p.Flags != ACK || p.Seq != cnext || p.Ack != snext {
				return c, fmt.Errorf("packet %d: want the handshake's ACK", i)
			}
			state = "est"
			continue
		case "done":
			return c, fmt.Errorf("packet %d after the end (%s)", i, c.End)
		}
		if p.Flags&RST != 0 {
			if !fromClient || p.Seq != cnext {
				return c, fmt.Errorf("packet %d: RST seq %d, want client's %d", i, p.Seq, cnext)
			}
			c.End, state = "rst", "done"
			continue
		}
		if p.Flags&ACK == 0 {
			return c, fmt.Errorf("packet %d: no ACK flag", i)
		}
		if fromClient {
			if p.Seq != cnext || p.Ack != snext {
				return c, fmt.Errorf("packet %d: client seq %d ack %d, want %d %d", i, p.Seq, p.Ack, cnext, snext)
			}
			c.ToServer = append(c.ToServer, p.Payload...)
			cnext += uint32(len(p.Payload))
			if p.Flags&FIN != 0 {
				cnext++
				cFin = true
			}
		} else {
			if p.Seq != snext || p.Ack != cnext {
				return c, fmt.Errorf("packet %d: server seq %d ack %d, want %d %d", i, p.Seq, p.Ack, snext, cnext)
			}
			c.ToClient = append(c.ToClient, p.Payload...)
			snext += uint32(len(p.Payload))
			if p.Flags&FIN != 0 {
				snext++
				sFin = true
			}
		}
		if cFin && sFin && fromClient && p.Flags == ACK && len(p.Payload) == 0 {
			c.End, state = "fin", "done"
		}
	}
	return c, nil
}

// Split groups frames by connection (the unordered pair of endpoints),
// keeping their order, keyed by the client (sender of the SYN).
func Split(frames [][]byte) (map[netip.AddrPort][][]byte, map[netip.AddrPort]netip.AddrPort, error) {
	byClient := map[netip.AddrPort][][]byte{}
	server := map[netip.AddrPort]netip.AddrPort{}
	peer := map[[2]netip.AddrPort]netip.AddrPort{} // (src,dst) -> client
	for i, f := range frames {
		p, err := Parse(f)
		if err != nil {
			return nil, nil, fmt.Errorf("packet %d: %w", i, err)
		}
		cl, ok := peer[[2]netip.AddrPort{p.Src, p.Dst}]
		if !ok {
			if p.Flags != SYN {
				return nil, nil, fmt.Errorf("packet %d: %v -> %v does not start with SYN", i, p.Src, p.Dst)
			}
			cl = p.Src
			peer[[2]netip.AddrPort{p.Src, p.Dst}] = cl
			peer[[2]netip.AddrPort{p.Dst, p.Src}] = cl
			server[cl] = p.Dst
		}
		byClient[cl] = append(byClient[cl], f)
	}
	return byClient, server, nil
}
