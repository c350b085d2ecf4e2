package geneve

import "encoding/binary"

// Port is the IANA UDP port of GENEVE; GWLB always sends to it.
const Port = 6081

// ClassAWS is the option class AWS GWLB uses for its metadata options.
const ClassAWS = 0x0108

// AWS option types within ClassAWS.
const (
	TypeEndpoint   = 1 // GWLB endpoint (VPC endpoint ENI) id, 8 bytes
	TypeAttachment = 2 // attachment id, 8 bytes
	TypeCookie     = 3 // flow cookie, 4 bytes
)

// Inner protocol types carried in the GENEVE header.
const (
	ProtoIPv4 = 0x0800
	ProtoIPv6 = 0x86DD
)

const (
	// BaseLen is the length of the fixed GENEVE header.
	BaseLen = 8
	// MaxOptionsLen is the largest options area the 6-bit length field can
	// describe (63 four-byte words).
	MaxOptionsLen = 63 * 4
	// MaxHeaderLen is the largest GENEVE header including options.
	MaxHeaderLen = BaseLen + MaxOptionsLen
	// AWSOptionsLen is the size of the three options GWLB sends.
	AWSOptionsLen = 12 + 12 + 8
	// MaxOptionDataLen is the largest data one option can carry (31 words).
	MaxOptionDataLen = 31 * 4
)

const (
	flagO        = 0x80 // control packet
	flagC        = 0x40 // critical options present
	typeCritical = 0x80 // high bit of an option type
)

// Reason says why Parse rejected a packet. String gives a snake_case label
// suitable for a metric.
type Reason uint8

// Reasons, in metric order. NumReasons sizes per-reason counter arrays.
const (
	OK              Reason = iota // accepted
	Truncated                     // shorter than its headers claim, or no inner packet
	BadVersion                    // GENEVE version is not 0
	BadOptionLength               // an option overruns the options area, or an AWS option has the wrong size
	BadProtocol                   // protocol type not IPv4/IPv6, or contradicted by the inner IP version
	Control                       // O bit set: control packets carry no data for us
	CriticalOption                // an option we do not understand has its critical bit set
	NoEndpoint                    // the AWS endpoint id option is missing
	NoAttachment                  // the AWS attachment id option is missing
	NoCookie                      // the AWS flow cookie option is missing
	NumReasons
)

var reasonNames = [NumReasons]string{
	OK:              "ok",
	Truncated:       "truncated",
	BadVersion:      "bad_version",
	BadOptionLength: "bad_option_length",
	BadProtocol:     "bad_protocol",
	Control:         "control",
	CriticalOption:  "critical_option",
	NoEndpoint:      "no_endpoint",
	NoAttachment:    "no_attachment",
	NoCookie:        "no_cookie",
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Header is a parsed GENEVE header.
type Header struct {
	// Raw is the GENEVE base header and all options exactly as received. It
	// aliases the packet passed to Parse; callers copy it to keep it.
	// Sending Raw back verbatim also returns unknown non-critical options
	// verbatim, which is what GWLB expects.
	Raw []byte
	// Protocol is the inner packet's type, ProtoIPv4 or ProtoIPv6.
	Protocol uint16
	// VNI is the virtual network identifier (GWLB sends 0).
	VNI uint32
	// EndpointID and AttachmentID are the AWS options 1 and 2.
	EndpointID, AttachmentID uint64
	// Cookie is the AWS flow cookie, option 3.
	Cookie uint32
}

// Parse parses the GENEVE header at the start of pkt, a UDP payload, into h
// and returns the inner packet (aliasing pkt). When r is not OK the packet
// must be dropped and h and inner are unspecified.
func Parse(pkt []byte, h *Header) (inner []byte, r Reason) {
	if len(pkt) < BaseLen {
		return nil, Truncated
	}
	if pkt[0]>>6 != 0 {
		return nil, BadVersion
	}
	hlen := BaseLen + int(pkt[0]&0x3f)*4
	if hlen > len(pkt) {
		return nil, Truncated
	}
	if pkt[1]&flagO != 0 {
		return nil, Control
	}
	proto := binary.BigEndian.Uint16(pkt[2:4])
	if proto != ProtoIPv4 && proto != ProtoIPv6 {
		return nil, BadProtocol
	}
	var have uint8 // bit 1<<type for the AWS options seen
	var endpoint, attachment uint64
	var cookie uint32
	for off := BaseLen; off < hlen; {
		if off+4 > hlen {
			return nil, BadOptionLength
		}
		class := binary.BigEndian.Uint16(pkt[off : off+2])
		typ := pkt[off+2]
		dlen := int(pkt[off+3]&0x1f) * 4
		data := off + 4
		end := data + dlen
		if end > hlen {
			return nil, BadOptionLength
		}
		known := false
		if class == ClassAWS {
			switch typ {
			case TypeEndpoint:
				if dlen != 8 {
					return nil, BadOptionLength
				}
				endpoint = binary.BigEndian.Uint64(pkt[data:end])
				known = true
			case TypeAttachment:
				if dlen != 8 {
					return nil, BadOptionLength
				}
				attachment = binary.BigEndian.Uint64(pkt[data:end])
				known = true
			case TypeCookie:
				if dlen != 4 {
					return nil, BadOptionLength
				}
				cookie = binary.BigEndian.Uint32(pkt[data:end])
				known = true
			}
			if known {
				have |= 1 << typ
			}
		}
		if !known && typ&typeCritical != 0 {
			return nil, CriticalOption
		}
		off = end
	}
	switch {
	case have&(1<<TypeEndpoint) == 0:
		return nil, NoEndpoint
	case have&(1<<TypeAttachment) == 0:
		return nil, NoAttachment
	case have&(1<<TypeCookie) == 0:
		return nil, NoCookie
	}
	inner = pkt[hlen:]
	if len(inner) == 0 {
		return nil, Truncated
	}
	switch v := inner[0] >> 4; {
	case proto == ProtoIPv4 && v != 4, proto == ProtoIPv6 && v != 6:
		return nil, BadProtocol
	}
	*h = Header{
		Raw:          pkt[:hlen:hlen],
		Protocol:     proto,
		VNI:          uint32(pkt[4])<<16 | uint32(pkt[5])<<8 | uint32(pkt[6]),
		EndpointID:   endpoint,
		AttachmentID: attachment,
		Cookie:       cookie,
	}
	return inner, OK
}

// Option is an extra GENEVE option for AppendHeader. A Type with the high
// bit set is critical. Data is zero-padded to a multiple of 4 bytes and may
// be at most MaxOptionDataLen bytes.
type Option struct {
	Class uint16
	Type  uint8
	Data  []byte
}

// AppendHeader appends a GENEVE header as GWLB builds it (the three AWS
// options, in order, followed by extra) to dst. The C bit is set when an
// extra option is critical. It panics if an option is too long or the
// options exceed MaxOptionsLen; it is meant for simulators and tests, whose
// options are fixed.
func AppendHeader(dst []byte, vni uint32, proto uint16, endpoint, attachment uint64, cookie uint32, extra ...Option) []byte {
	optLen := AWSOptionsLen
	flags := byte(0)
	for _, o := range extra {
		if len(o.Data) > MaxOptionDataLen {
			panic("geneve: option data too long")
		}
		optLen += 4 + (len(o.Data)+3)&^3
		if o.Type&typeCritical != 0 {
			flags |= flagC
		}
	}
	if optLen > MaxOptionsLen {
		panic("geneve: options too long")
	}
	dst = append(dst, byte(optLen/4), flags, byte(proto>>8), byte(proto),
		byte(vni>>16), byte(vni>>8), byte(vni), 0)
	dst = append(dst, ClassAWS>>8, ClassAWS&0xff, TypeEndpoint, 2)
	dst = binary.BigEndian.AppendUint64(dst, endpoint)
	dst = append(dst, ClassAWS>>8, ClassAWS&0xff, TypeAttachment, 2)
	dst = binary.BigEndian.AppendUint64(dst, attachment)
	dst = append(dst, ClassAWS>>8, ClassAWS&0xff, TypeCookie, 1)
	dst = binary.BigEndian.AppendUint32(dst, cookie)
	for _, o := range extra {
		words := (len(o.Data) + 3) / 4
		dst = append(dst, byte(o.Class>>8), byte(o.Class), o.Type, byte(words))
		dst = append(dst, o.Data...)
		for i := len(o.Data); i < words*4; i++ {
			dst = append(dst, 0)
		}
	}
	return dst
}
