package offload

import (
	"encoding/binary"
	"errors"
)

// VirtioNetHdrLen is sizeof(struct virtio_net_hdr), the header a tun device
// opened with IFF_VNET_HDR reads and writes before every packet.
const VirtioNetHdrLen = 10

// Virtio-net header flags and GSO types (include/uapi/linux/virtio_net.h).
const (
	FlagNeedsCsum = 1 // checksum at CsumStart+CsumOffset is partial (CHECKSUM_PARTIAL)
	FlagDataValid = 2 // checksum already verified

	GSONone  = 0
	GSOTCPv4 = 1
	GSOUDP   = 3 // UFO: fragmentation offload, never produced by modern kernels
	GSOTCPv6 = 4
	GSOUDPL4 = 5    // UDP segmentation (USO), kernel 6.2+
	GSOECN   = 0x80 // ORed into the type: the first segment carries CWR
)

// VirtioNetHdr is struct virtio_net_hdr. tun uses the host's byte order for
// it (legacy virtio on a little-endian host is little-endian; we never set
// TUNSETVNETBE).
type VirtioNetHdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
}

var errShortVirtio = errors.New("offload: packet shorter than the virtio-net header")

// Decode reads the header from the first VirtioNetHdrLen bytes of b.
func (h *VirtioNetHdr) Decode(b []byte) error {
	if len(b) < VirtioNetHdrLen {
		return errShortVirtio
	}
	h.Flags = b[0]
	h.GSOType = b[1]
	h.HdrLen = binary.NativeEndian.Uint16(b[2:])
	h.GSOSize = binary.NativeEndian.Uint16(b[4:])
	h.CsumStart = binary.NativeEndian.Uint16(b[6:])
	h.CsumOffset = binary.NativeEndian.Uint16(b[8:])
	return nil
}

// Encode writes the header into the first VirtioNetHdrLen bytes of b,
// which must be long enough.
func (h *VirtioNetHdr) Encode(b []byte) {
	_ = b[VirtioNetHdrLen-1]
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.NativeEndian.PutUint16(b[2:], h.HdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.GSOSize)
	binary.NativeEndian.PutUint16(b[6:], h.CsumStart)
	binary.NativeEndian.PutUint16(b[8:], h.CsumOffset)
}
