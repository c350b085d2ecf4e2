// Package squid translates the access rules of a squid.conf into a
// gwlbproxy policy, for operators leaving a Squid ssl-bump stack.
//
// What translates: acl types src, dst, dstdomain, ssl::server_name and port
// (inline values), http_access allow|deny with any number of ACLs, "all"
// and "!" on port, src and dst ACLs (as complements), and the final
// ssl_bump actions splice, bump and terminate (peek and stare only look;
// at_step ACLs are dropped because gwlbproxy decides once, on the
// ClientHello's SNI). Everything else (dstdom_regex and other regex ACLs,
// ACLs read from files, CONNECT and other methods, cache manager access,
// non-policy directives) is reported with its line number, never guessed.
//
// Semantics kept: Squid's http_access is first match wins with a default
// opposite to the last rule's action, as are gwlbproxy's rules; ssl_bump
// refines connections http_access allows, so a splice or terminate for ACL
// S becomes, before every allow rule R, a rule matching R and S. TLS that
// no final ssl_bump action covers is spliced by Squid, so without a final
// "bump" the allow rules become splice (plain HTTP is allowed either way).
package squid

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// Note is a line that was not (or not entirely) translated, or a remark
// about how it was.
type Note struct {
	Line int
	Text string
}

func (n Note) String() string {
	if n.Line == 0 {
		return n.Text
	}
	return fmt.Sprintf("line %d: %s", n.Line, n.Text)
}

// Result is a translation.
type Result struct {
	Policy policy.Config
	// Translated counts the access lines (http_access, ssl_bump) that
	// contributed rules or the default action.
	Translated int
	Notes      []Note
}

// crit is the criteria an ACL (or a conjunction of ACLs) stands for.
type crit struct {
	clients, dsts []netip.Prefix
	ports         []policy.PortRange
	domains       []string
	none          bool // matches nothing (!all)
}

func (c crit) empty() bool {
	return c.clients == nil && c.dsts == nil && c.ports == nil && c.domains == nil
}

// and is c AND o; ok false when both constrain the same field (an
// intersection gwlbproxy rules cannot say without more rules).
func (c crit) and(o crit) (crit, bool) {
	r := c
	r.none = c.none || o.none
	if o.clients != nil {
		if c.clients != nil {
			return r, false
		}
		r.clients = o.clients
	}
	if o.dsts != nil {
		if c.dsts != nil {
			return r, false
		}
		r.dsts = o.dsts
	}
	if o.ports != nil {
		if c.ports != nil {
			return r, false
		}
		r.ports = o.ports
	}
	if o.domains != nil {
		if c.domains != nil {
			if !slices.Equal(c.domains, o.domains) {
				return r, false
			}
		}
		r.domains = o.domains
	}
	return r, true
}

type acl struct {
	typ    string
	line   int
	c      crit
	bad    string // why it cannot be translated ("" = fine)
	step   int    // at_step: 1..3
	values []string
}

type access struct {
	line   int
	action string // allow, deny; splice, bump, terminate, peek, stare
	refs   []string
	text   string
}

// Translate reads squid.conf from r.
func Translate(r io.Reader) (Result, error) {
	res := Result{Policy: policy.DefaultConfig()}
	acls := map[string]*acl{
		"all":          {typ: "src", c: crit{}},
		"localhost":    {typ: "src", c: crit{clients: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128")}}},
		"to_localhost": {typ: "dst", c: crit{dsts: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("0.0.0.0/32"), netip.MustParsePrefix("::1/128")}}},
	}
	note := func(line int, format string, a ...any) {
		res.Notes = append(res.Notes, Note{line, fmt.Sprintf(format, a...)})
	}
	var httpAccess, sslBump []access
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n, phys := 0, 0 // n: the first physical line of the logical line
	var cont string
	for sc.Scan() {
		phys++
		raw := sc.Text()
		if cont == "" {
			n = phys
		}
		if strings.HasSuffix(raw, "\\") { // continuation
			cont += strings.TrimSuffix(raw, "\\") + " "
			continue
		}
		raw, cont = cont+raw, ""
		line := raw
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "acl":
			if len(f) < 3 {
				note(n, "not translated: acl without name and type: %s", strings.TrimSpace(raw))
				continue
			}
			name, typ, vals := f[1], f[2], f[3:]
			a := acls[name]
			if builtin := a != nil && a.line == 0; a == nil || builtin {
				a = &acl{typ: typ, line: n}
				if builtin {
					note(n, "acl %s redefined: the translation uses this definition", name)
				}
				acls[name] = a
			} else if a.typ != typ {
				a.bad = fmt.Sprintf("acl %s has two types (%s, %s)", name, a.typ, typ)
				note(n, "not translated: %s", a.bad)
				continue
			}
			if why := a.add(vals); why != "" {
				note(n, "not translated: acl %s %s: %s", name, typ, why)
			}
		case "http_access", "ssl_bump":
			if len(f) < 2 {
				note(n, "not translated: %s without an action", f[0])
				continue
			}
			ac := access{line: n, action: f[1], refs: f[2:], text: strings.Join(f, " ")}
			if f[0] == "http_access" {
				if ac.action != "allow" && ac.action != "deny" {
					note(n, "not translated: http_access action %q", ac.action)
					continue
				}
				httpAccess = append(httpAccess, ac)
			} else {
				switch ac.action {
				case "splice", "bump", "terminate", "peek", "stare":
					sslBump = append(sslBump, ac)
				case "client-first", "server-first", "none":
					note(n, "not translated: ssl_bump %s (a Squid 3.4 mode; use peek, splice, bump, terminate)", ac.action)
				default:
					note(n, "not translated: ssl_bump action %q", ac.action)
				}
			}
		case "include":
			note(n, "not translated: %s (included files are not read: translate them separately)", strings.Join(f, " "))
		default:
			note(n, "not policy, not translated: %s", strings.Join(f, " "))
		}
	}
	if err := sc.Err(); err != nil {
		return res, fmt.Errorf("reading squid.conf: %w", err)
	}
	t := &translator{acls: acls, res: &res, note: note}
	t.translate(httpAccess, sslBump)
	return res, nil
}

// add appends an acl line's values; a non-empty result says why the acl
// cannot be translated (it is then marked bad).
func (a *acl) add(vals []string) string {
	var flags []string
	for len(vals) > 0 && strings.HasPrefix(vals[0], "-") {
		flags = append(flags, vals[0])
		vals = vals[1:]
	}
	fail := func(why string) string {
		if a.bad == "" {
			a.bad = why
		}
		return why
	}
	if len(vals) == 0 {
		return fail("no values")
	}
	for _, v := range vals {
		if strings.HasPrefix(v, `"`) {
			return fail("values read from file " + v + " (inline the entries to translate them)")
		}
	}
	a.values = append(a.values, vals...)
	switch a.typ {
	case "src", "dst":
		for _, v := range vals {
			ps, err := parseAddrs(v)
			if err != nil {
				return fail(err.Error())
			}
			if a.typ == "src" {
				a.c.clients = append(a.c.clients, ps...)
			} else {
				a.c.dsts = append(a.c.dsts, ps...)
			}
		}
	case "port":
		for _, v := range vals {
			pr, err := policy.ParsePortRange(v)
			if err != nil {
				return fail(err.Error())
			}
			a.c.ports = append(a.c.ports, pr)
		}
	case "dstdomain", "ssl::server_name":
		for _, fl := range flags {
			if fl != "-n" && fl != "-i" {
				return fail("flag " + fl)
			}
		}
		for _, v := range vals {
			d := strings.ToLower(v)
			if strings.HasPrefix(d, ".") {
				// Squid: ".example.com" is example.com and every name below.
				a.c.domains = append(a.c.domains, d[1:], "*"+d)
			} else {
				a.c.domains = append(a.c.domains, d)
			}
		}
		for _, d := range a.c.domains {
			if n, err := policy.NormalizeName(strings.TrimPrefix(d, "*.")); err != nil || n == "" {
				return fail(fmt.Sprintf("%q is not a domain name", d))
			}
		}
	case "at_step":
		for _, v := range vals {
			switch v {
			case "SslBump1":
				a.step = 1
			case "SslBump2":
				a.step = 2
			case "SslBump3":
				a.step = 3
			default:
				return fail("step " + v)
			}
		}
	case "dstdom_regex", "ssl::server_name_regex", "url_regex", "urlpath_regex", "srcdom_regex":
		return fail("regular expressions are not translated (gwlbproxy matches exact names and *.suffix): list the names as dstdomain")
	case "method":
		return fail("methods: a transparent proxy sees no CONNECT, and rules do not match methods")
	default:
		return fail("acl type " + a.typ + " has no gwlbproxy equivalent")
	}
	return ""
}

// parseAddrs parses a Squid address: ip, ip/bits, ip/netmask, or
// ip1-ip2 (with an optional /mask on the end, ignored).
func parseAddrs(v string) ([]netip.Prefix, error) {
	if v == "all" {
		return []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}, nil
	}
	if lo, hi, ok := strings.Cut(v, "-"); ok {
		hi, _, _ = strings.Cut(hi, "/")
		a, err1 := netip.ParseAddr(lo)
		b, err2 := netip.ParseAddr(hi)
		if err1 != nil || err2 != nil || a.Is4() != b.Is4() || b.Less(a) {
			return nil, fmt.Errorf("address range %q", v)
		}
		return rangePrefixes(a, b), nil
	}
	if ip, mask, ok := strings.Cut(v, "/"); ok {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("address %q", v)
		}
		bits, err := strconv.Atoi(mask)
		if err != nil {
			m, err := netip.ParseAddr(mask)
			if err != nil || !m.Is4() {
				return nil, fmt.Errorf("netmask in %q", v)
			}
			b := m.As4()
			n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
			bits = 0
			for n&(1<<31) != 0 {
				bits++
				n <<= 1
			}
			if n != 0 {
				return nil, fmt.Errorf("netmask in %q is not contiguous", v)
			}
		}
		p, err := a.Prefix(bits)
		if err != nil {
			return nil, fmt.Errorf("address %q: %v", v, err)
		}
		return []netip.Prefix{p}, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return nil, fmt.Errorf("address %q (host names are not translated)", v)
	}
	return []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}, nil
}

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	b := a.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	r, _ := netip.AddrFromSlice(b)
	return r
}

// rangePrefixes covers lo..hi exactly with the fewest prefixes.
func rangePrefixes(lo, hi netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for {
		bits := lo.BitLen()
		for bits > 0 {
			p, _ := lo.Prefix(bits - 1)
			if p.Addr() != lo || hi.Less(lastAddr(p)) {
				break
			}
			bits--
		}
		p := netip.PrefixFrom(lo, bits)
		out = append(out, p)
		last := lastAddr(p)
		if last == hi {
			return out
		}
		lo = last.Next()
	}
}

// complementPorts is 1..65535 minus rs.
func complementPorts(rs []policy.PortRange) []policy.PortRange {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b policy.PortRange) int { return int(a.Lo) - int(b.Lo) })
	var out []policy.PortRange
	next := 1
	for _, r := range s {
		if int(r.Lo) > next {
			out = append(out, policy.PortRange{Lo: uint16(next), Hi: r.Lo - 1})
		}
		next = max(next, int(r.Hi)+1)
	}
	if next <= 65535 {
		out = append(out, policy.PortRange{Lo: uint16(next), Hi: 65535})
	}
	return out
}

// complementPrefixes is the address space of the prefixes' family minus
// them (IPv4 and IPv6 separately: a family ps does not mention stays
// whole).
func complementPrefixes(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, fam := range []struct{ lo, hi netip.Addr }{
		{netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("255.255.255.255")},
		{netip.MustParseAddr("::"), netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")},
	} {
		var in []netip.Prefix
		for _, p := range ps {
			if p.Addr().Is4() == fam.lo.Is4() {
				in = append(in, p.Masked())
			}
		}
		slices.SortFunc(in, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		next, done := fam.lo, false
		for _, p := range in {
			if done {
				break
			}
			if next.Less(p.Addr()) {
				out = append(out, rangePrefixes(next, p.Addr().Prev())...)
			}
			if l := lastAddr(p); !l.Less(next) {
				if l == fam.hi {
					done = true
				} else {
					next = l.Next()
				}
			}
		}
		if !done {
			out = append(out, rangePrefixes(next, fam.hi)...)
		}
	}
	return out
}

type translator struct {
	acls map[string]*acl
	res  *Result
	note func(int, string, ...any)
}

// conj resolves an access line's ACL references into criteria; why says
// what cannot be translated.
func (t *translator) conj(ac access, stepsOK bool) (c crit, steps []int, why string) {
	for _, ref := range ac.refs {
		neg := strings.HasPrefix(ref, "!")
		name := strings.TrimPrefix(ref, "!")
		a := t.acls[name]
		switch {
		case name == "CONNECT" && a == nil:
			return c, nil, "CONNECT: a transparent proxy sees no CONNECT requests (TLS is decided on the SNI)"
		case name == "manager" && a == nil:
			return c, nil, "cache manager access has no gwlbproxy equivalent"
		case a == nil:
			return c, nil, "acl " + name + " is not defined"
		case a.bad != "":
			return c, nil, "acl " + name + ": " + a.bad
		}
		if a.typ == "at_step" {
			if !stepsOK {
				return c, nil, "at_step outside ssl_bump"
			}
			if neg {
				return c, nil, "!" + name + ": a negated step"
			}
			steps = append(steps, a.step)
			continue
		}
		ac := a.c
		if name == "all" && a.line == 0 {
			if neg {
				ac = crit{none: true}
			}
		} else if neg {
			switch {
			case a.c.ports != nil:
				ac = crit{ports: complementPorts(a.c.ports)}
			case a.c.clients != nil:
				ac = crit{clients: complementPrefixes(a.c.clients)}
			case a.c.dsts != nil:
				ac = crit{dsts: complementPrefixes(a.c.dsts)}
			default:
				return c, nil, "!" + name + ": a negated " + a.typ + " acl cannot be expressed"
			}
		}
		var ok bool
		if c, ok = c.and(ac); !ok {
			return c, nil, "two ACLs constrain the same field (" + ref + "): gwlbproxy rules cannot intersect them"
		}
	}
	return c, steps, ""
}

func (t *translator) translate(httpAccess, sslBump []access) {
	res := t.res
	// ssl_bump: the refinements (splice/terminate of some traffic) and the
	// final action for the rest of TLS.
	type refine struct {
		line   int
		action policy.Action
		verb   string // squid's
		c      crit
	}
	var refines []refine
	tlsDefault, tlsDefaultLine := policy.Splice, 0 // Squid splices what no final action covers
	finalSeen := false
	for _, ac := range sslBump {
		c, steps, why := t.conj(ac, true)
		if why != "" {
			t.note(ac.line, "not translated: %s (%s)", ac.text, why)
			continue
		}
		if ac.action == "peek" || ac.action == "stare" {
			t.note(ac.line, "%s: nothing to translate (gwlbproxy always reads the ClientHello before deciding)", ac.text)
			res.Translated++
			continue
		}
		if finalSeen {
			t.note(ac.line, "not translated: %s comes after a final action for all traffic (unreachable)", ac.text)
			continue
		}
		if len(steps) > 0 {
			t.note(ac.line, "%s: at_step dropped (gwlbproxy decides once, on the SNI)", ac.text)
		}
		act := map[string]policy.Action{"splice": policy.Splice, "bump": policy.Allow, "terminate": policy.Deny}[ac.action]
		if c.none {
			t.note(ac.line, "not translated: %s never matches (!all)", ac.text)
			continue
		}
		res.Translated++
		if c.empty() {
			tlsDefault, tlsDefaultLine, finalSeen = act, ac.line, true
			continue
		}
		refines = append(refines, refine{ac.line, act, ac.action, c})
	}
	switch {
	case len(sslBump) == 0:
		t.note(0, "no ssl_bump: Squid passes TLS through, so allow rules become splice (change them to allow to inspect)")
	case tlsDefaultLine == 0:
		t.note(0, "no final ssl_bump action for all traffic: Squid splices the rest, so allow rules become splice")
	}

	rules := []policy.Rule{}
	for i, ac := range httpAccess {
		c, _, why := t.conj(ac, false)
		if why != "" {
			t.note(ac.line, "not translated: %s (%s)", ac.text, why)
			continue
		}
		if c.none {
			t.note(ac.line, "not translated: %s never matches (!all)", ac.text)
			continue
		}
		act := policy.Deny
		if ac.action == "allow" {
			act = policy.Allow
		}
		res.Translated++
		name := fmt.Sprintf("http_access-L%d-%s", ac.line, ac.action)
		if act == policy.Allow {
			for _, rf := range refines {
				rc, ok := c.and(rf.c)
				if !ok {
					t.note(rf.line, "ssl_bump refinement not applied to http_access line %d: both constrain the same field", ac.line)
					continue
				}
				rules = append(rules, rule(fmt.Sprintf("%s-L%d-%s", name, rf.line, rf.verb), rf.action, rc))
			}
			if tlsDefault == policy.Deny {
				act = policy.Deny
				t.note(ac.line, "%s: TLS it allows is terminated by ssl_bump line %d; the rule denies (plain HTTP too)", ac.text, tlsDefaultLine)
			} else {
				act = tlsDefault
			}
		}
		if c.empty() {
			// "all": the default action; later lines are unreachable.
			res.Policy.DefaultAction = act
			for _, later := range httpAccess[i+1:] {
				t.note(later.line, "not translated: %s comes after %q (unreachable)", later.text, ac.text)
			}
			res.Policy.Rules = rules
			return
		}
		rules = append(rules, rule(name, act, c))
	}
	res.Policy.Rules = rules
	// Squid's default is the opposite of the last http_access line's action.
	if len(httpAccess) > 0 {
		last := httpAccess[len(httpAccess)-1]
		if last.action == "deny" {
			res.Policy.DefaultAction = policy.Allow
			if tlsDefault == policy.Splice {
				res.Policy.DefaultAction = policy.Splice
			}
		}
		t.note(last.line, "no http_access line for all traffic: default_action %s (the opposite of the last line, as Squid does)", res.Policy.DefaultAction)
	} else {
		t.note(0, "no http_access lines: Squid denies everything; default_action deny")
	}
}

func rule(name string, act policy.Action, c crit) policy.Rule {
	return policy.Rule{Name: name, Action: act, Clients: c.clients, Destinations: c.dsts, Ports: c.ports, Domains: c.domains}
}
