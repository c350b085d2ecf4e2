package geneve

import "strconv"

// base60 is gwlbtun's alphabet for interface names. Operators' hook scripts
// and dashboards key on these names, so it must not change.
const base60 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX"

// AppendBase60 appends the endpoint id in base 60, most significant digit
// first, without padding (at most 11 digits).
func AppendBase60(dst []byte, endpoint uint64) []byte {
	var buf [11]byte
	i := len(buf)
	for {
		i--
		buf[i] = base60[endpoint%60]
		endpoint /= 60
		if endpoint == 0 {
			break
		}
	}
	return append(dst, buf[i:]...)
}

// Base60 returns the endpoint id as gwlbtun spells it in interface names,
// e.g. 0x0123456789abcdef is "887epl1uMf".
func Base60(endpoint uint64) string {
	var buf [11]byte
	return string(AppendBase60(buf[:0], endpoint))
}

// EndpointHex returns the endpoint id as 17 lower-case hex digits, the form
// AWS shows after "vpce-" and the one hook scripts receive.
func EndpointHex(endpoint uint64) string {
	var buf [17]byte
	s := strconv.AppendUint(buf[:0], endpoint, 16)
	var out [17]byte
	pad := len(out) - len(s)
	for i := 0; i < pad; i++ {
		out[i] = '0'
	}
	copy(out[pad:], s)
	return string(out[:])
}

// InterfaceNames returns the tunnel pair's interface names for an endpoint:
// "gwi-<base60>" (ingress) and "gwo-<base60>" (egress). Both fit the
// kernel's 15-byte limit.
func InterfaceNames(endpoint uint64) (in, out string) {
	b := Base60(endpoint)
	return "gwi-" + b, "gwo-" + b
}
