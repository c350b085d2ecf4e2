package proxy

import (
	"errors"
	"fmt"
)

// A spliced connection is allowed because its ClientHello named a host;
// after the hello it must go on being TLS, or a client could say an
// allowed name and then relay anything (plain HTTP, an SSH session) to any
// address. tlsFramer follows the record framing of one direction and
// refuses the first malformed 5-byte header (RFC 8446 section 5.1, RFC
// 5246 section 6.2): content type 20 change_cipher_spec, 21 alert, 22
// handshake or 23 application_data (24 heartbeat has no business here);
// legacy version 0x0301-0x0303; length at most 2^14+2048 (the TLS 1.2
// ciphertext bound; TLS 1.3 stays under 2^14+256). Payload bytes are only
// counted, never looked at or copied.
type tlsFramer struct {
	left int   // payload bytes of the current record still to come
	seen int64 // bytes scanned, for the error message
}

// maxRecordLen is the largest record length a header may announce.
const maxRecordLen = 1<<14 + 2048

// errNotTLS is wrapped by scan's errors.
var errNotTLS = errors.New("not-tls")

// scan follows the records in b, which starts where the previous call
// stopped minus the held bytes it returned. It returns how many bytes of
// b may be forwarded: everything up to an incomplete header at the end
// (fewer than 5 bytes, to be held and completed by the next read) or up to
// the first malformed header (err != nil; nothing from there on may pass).
func (f *tlsFramer) scan(b []byte) (pass int, err error) {
	i := 0
	for i < len(b) {
		if f.left > 0 {
			k := min(f.left, len(b)-i)
			f.left -= k
			i += k
			continue
		}
		if len(b)-i < 5 {
			break // held until the header is complete
		}
		h := b[i : i+5]
		typ, ver, n := h[0], int(h[1])<<8|int(h[2]), int(h[3])<<8|int(h[4])
		if typ < 20 || typ > 23 || ver < 0x0301 || ver > 0x0303 || n > maxRecordLen {
			f.seen += int64(i)
			return i, fmt.Errorf("%w: malformed TLS record header % x after %d bytes", errNotTLS, h, f.seen)
		}
		f.left = n
		i += 5
	}
	f.seen += int64(i)
	return i, nil
}
