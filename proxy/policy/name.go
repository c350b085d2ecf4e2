package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"
)

// MaxNameLen caps a normalized domain name (RFC 1035: 253 octets in text form).
const MaxNameLen = 253

// ErrInvalidName is wrapped by NormalizeName for names that cannot be a DNS
// host name. Callers treat such names as "no match for any domain rule" and the
// front end denies them outright, so a NUL byte or a 10 kB SNI can never be
// matched by a permissive `*.suffix` rule.
var ErrInvalidName = errors.New("invalid host name")

var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.Transitional(false),
	idna.StrictDomainName(true),
	idna.VerifyDNSLength(true),
	idna.BidiRule(),
)

// NormalizeName returns the canonical form used for every comparison: lower
// case, trailing dot removed, Unicode labels converted to punycode (IDNA2008
// lookup). IP literals (with or without brackets) are returned in netip's
// canonical text form. The empty string normalizes to itself.
//
// The same function is applied to SNI, Host headers and rule patterns, so
// `Example.COM.`, `example.com` and `xn--...` forms of one name compare equal.
func NormalizeName(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	if len(s) > 4*MaxNameLen {
		return "", fmt.Errorf("%w: %d bytes", ErrInvalidName, len(s))
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	if mayBeIP(s) {
		if a, err := netip.ParseAddr(s); err == nil {
			return a.Unmap().String(), nil
		}
	}
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidName)
	}
	if isASCIIHost(s) {
		// Fast path: already lower-case-able ASCII LDH (plus '_', which real
		// names use even though IDNA rejects it).
		out := strings.ToLower(s)
		if len(out) > MaxNameLen {
			return "", fmt.Errorf("%w: longer than %d", ErrInvalidName, MaxNameLen)
		}
		if !labelsOK(out) {
			return "", fmt.Errorf("%w: bad label", ErrInvalidName)
		}
		if strings.HasPrefix(out, "xn--") || strings.Contains(out, ".xn--") {
			// Validate punycode labels and canonicalize them.
			a, err := idnaProfile.ToASCII(out)
			if err != nil {
				return "", fmt.Errorf("%w: %v", ErrInvalidName, err)
			}
			return a, nil
		}
		return out, nil
	}
	a, err := idnaProfile.ToASCII(s)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidName, err)
	}
	a = strings.ToLower(a)
	if len(a) > MaxNameLen {
		return "", fmt.Errorf("%w: longer than %d", ErrInvalidName, MaxNameLen)
	}
	return a, nil
}

// mayBeIP is false for strings netip.ParseAddr certainly rejects (no ':'
// and not starting with a digit), sparing its error allocation for every
// host name.
func mayBeIP(s string) bool {
	return s != "" && (s[0] >= '0' && s[0] <= '9' || strings.IndexByte(s, ':') >= 0)
}

// labelsOK says every dot-separated label of s is 1..63 bytes.
func labelsOK(s string) bool {
	for {
		i := strings.IndexByte(s, '.')
		if i < 0 {
			return s != "" && len(s) <= 63
		}
		if i == 0 || i > 63 {
			return false
		}
		s = s[i+1:]
	}
}

func isASCIIHost(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.', c == '_':
		default:
			return false
		}
	}
	return true
}

// HostOnly strips an optional :port from a Host header value, keeping
// bracketed IPv6 literals intact for NormalizeName.
func HostOnly(hostport string) string {
	if hostport == "" {
		return ""
	}
	if hostport[0] == '[' {
		if i := strings.IndexByte(hostport, ']'); i > 0 {
			return hostport[:i+1]
		}
		return hostport
	}
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && strings.IndexByte(hostport, ':') == i {
		return hostport[:i]
	}
	return hostport
}
