package ca

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"
)

// ErrInvalidName is wrapped by every error about a server name that cannot
// be put in a certificate.
var ErrInvalidName = errors.New("invalid server name")

// Hostname limits from RFC 1035 (without the trailing root dot).
const (
	maxNameLen  = 253
	maxLabelLen = 63
)

// NormalizeName returns the form of a TLS server name (SNI) that goes into a
// leaf certificate's DNS SAN and the cache key: lower-case, one trailing dot
// stripped, internationalized labels converted to punycode (IDNA2008 lookup
// rules via golang.org/x/net/idna).
//
// It rejects anything that is not a plain hostname: empty names, names over
// 253 bytes or labels over 63, empty labels, NUL and other control bytes,
// wildcards, spaces and punctuation, labels starting or ending with '-',
// IP literals (use the IP path) and names whose last label is numeric (which
// URL parsers treat as IPv4 forms such as "0x7f.1" or "127.1").
// Underscores are accepted in ASCII labels because real hosts use them and
// browsers accept them in certificates.
//
// A name that is already normalized is returned as-is without allocating.
func NormalizeName(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidName)
	}
	if len(name) > 4*maxNameLen {
		// Long before IDNA could shrink it below the limit.
		return "", invalid(name, "longer than 253 bytes")
	}
	n := strings.TrimSuffix(name, ".")
	needIDNA, needLower := false, false
	for i := 0; i < len(n); i++ {
		c := n[i]
		switch {
		case c >= 0x80:
			needIDNA = true
		case 'A' <= c && c <= 'Z':
			needLower = true
		}
		if (c == 'x' || c == 'X') && (i == 0 || n[i-1] == '.') && isACEPrefix(n[i:]) {
			// A punycode ("xn--") label must decode to a valid name.
			needIDNA = true
		}
	}
	if needIDNA {
		a, ok := toASCII(n)
		if !ok {
			return "", invalid(name, "not a valid internationalized name")
		}
		n = a
	} else if needLower {
		n = strings.ToLower(n)
	}
	if err := checkLDH(n); err != "" {
		return "", invalid(name, err)
	}
	return n, nil
}

// toASCII converts the labels of n that need it (non-ASCII, or "xn--") to
// lower-case A-labels with the IDNA2008 registration profile, which refuses
// characters that lookup would silently map or drop (zero-width spaces,
// full-width forms): a name that reaches the certificate is the name the
// client sent, not a look-alike. Other labels are only lower-cased.
func toASCII(n string) (string, bool) {
	labels := strings.Split(n, ".")
	for i, l := range labels {
		ascii := true
		for j := 0; j < len(l); j++ {
			if l[j] >= 0x80 {
				ascii = false
				break
			}
		}
		l = strings.ToLower(l)
		if ascii && !isACEPrefix(l) {
			labels[i] = l
			continue
		}
		a, err := idna.Registration.ToASCII(l)
		if err != nil || a == "" {
			return "", false
		}
		labels[i] = strings.ToLower(a)
	}
	return strings.Join(labels, "."), true
}

// checkLDH checks n as a lower-case ASCII hostname and returns the reason it
// is not one, or "".
func checkLDH(n string) string {
	if len(n) == 0 {
		return "empty"
	}
	if len(n) > maxNameLen {
		return "longer than 253 bytes"
	}
	start := 0
	allDigits := true
	for i := 0; i <= len(n); i++ {
		if i == len(n) || n[i] == '.' {
			l := n[start:i]
			switch {
			case len(l) == 0:
				return "empty label"
			case len(l) > maxLabelLen:
				return "label longer than 63 bytes"
			case l[0] == '-' || l[len(l)-1] == '-':
				return "label starts or ends with '-'"
			}
			if i == len(n) && allDigits {
				return "numeric last label (IP-like)"
			}
			start = i + 1
			allDigits = true
			continue
		}
		c := n[i]
		switch {
		case '0' <= c && c <= '9':
		case 'a' <= c && c <= 'z', c == '-', c == '_':
			allDigits = false
		case c == '*':
			return "wildcard"
		case c == 0:
			return "NUL byte"
		default:
			return "character not allowed in a hostname"
		}
	}
	return ""
}

func invalid(name, why string) error {
	if len(name) > 80 {
		name = name[:80] + "..."
	}
	return fmt.Errorf("%w %q: %s", ErrInvalidName, name, why)
}

// isACEPrefix reports whether s starts with "xn--" in any case.
func isACEPrefix(s string) bool {
	return len(s) >= 4 && (s[1] == 'n' || s[1] == 'N') && s[2] == '-' && s[3] == '-'
}

// nameAsIP returns the address when a server name is an IP literal. Clients
// must not send IP literals in SNI, but some do; the leaf then gets an IP
// SAN. Only strings containing ':' or made only of digits and dots are
// parsed, so ordinary hostnames never pay for a failed parse.
func nameAsIP(name string) (netip.Addr, bool) {
	if strings.IndexByte(name, ':') < 0 {
		for i := 0; i < len(name); i++ {
			if c := name[i]; c != '.' && (c < '0' || c > '9') {
				return netip.Addr{}, false
			}
		}
	}
	a, err := netip.ParseAddr(name)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
