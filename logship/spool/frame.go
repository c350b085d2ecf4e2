package spool

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// Frame layout, little endian:
//
//	0  uint32 payload length n
//	4  uint32 CRC32C of bytes [8, 24+n) (sequence, timestamp and payload)
//	8  uint64 sequence number
//	16 int64  timestamp, Unix milliseconds
//	24 payload
//
// The CRC covers the sequence so a frame copied to the wrong place (or a
// stale block reused by the file system) is detected, not just bit flips.
const (
	frameHeader = 24
	// maxPayload bounds a frame so a corrupted length cannot make replay
	// allocate gigabytes; records are capped far below this by the shipper.
	maxPayload = 16 << 20
)

// segMagic starts every segment file (format version in the last byte).
var segMagic = [8]byte{'L', 'G', 'S', 'P', 'O', 'O', 'L', '1'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	errShort   = errors.New("short frame")
	errLength  = errors.New("frame length out of range")
	errCRC     = errors.New("frame checksum mismatch")
	errSeq     = errors.New("frame sequence out of order")
	errBadHead = errors.New("bad segment header")
)

// appendFrame appends one encoded frame to dst.
func appendFrame(dst []byte, seq uint64, ts int64, payload []byte) []byte {
	off := len(dst)
	dst = append(dst, make([]byte, frameHeader)...)
	dst = append(dst, payload...)
	h := dst[off:]
	binary.LittleEndian.PutUint32(h[0:], uint32(len(payload)))
	binary.LittleEndian.PutUint64(h[8:], seq)
	binary.LittleEndian.PutUint64(h[16:], uint64(ts))
	binary.LittleEndian.PutUint32(h[4:], crc32.Checksum(h[8:frameHeader+len(payload)], castagnoli))
	return dst
}

// frameLen returns the total length of the frame starting at b, or an
// error if b does not yet hold a complete header.
func frameLen(b []byte) (int, error) {
	if len(b) < frameHeader {
		return 0, errShort
	}
	n := binary.LittleEndian.Uint32(b)
	if n > maxPayload {
		return 0, errLength
	}
	return frameHeader + int(n), nil
}

// decodeFrame validates the complete frame at the start of b.
func decodeFrame(b []byte) (seq uint64, ts int64, payload []byte, size int, err error) {
	size, err = frameLen(b)
	if err != nil {
		return 0, 0, nil, 0, err
	}
	if len(b) < size {
		return 0, 0, nil, 0, errShort
	}
	if crc32.Checksum(b[8:size], castagnoli) != binary.LittleEndian.Uint32(b[4:]) {
		return 0, 0, nil, 0, errCRC
	}
	seq = binary.LittleEndian.Uint64(b[8:])
	ts = int64(binary.LittleEndian.Uint64(b[16:]))
	return seq, ts, b[frameHeader:size], size, nil
}
