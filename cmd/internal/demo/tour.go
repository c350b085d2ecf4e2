package demo

import (
	"bytes"
	"context"
	"fmt"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flowlog"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
)

// Step is one stop of the tour: what was done, what happened, whether that
// is what the appliance should do, and the records it wrote about it.
type Step struct {
	Name    string // short id, e.g. "https-bump"
	Title   string
	Said    []string // what happened, in plain words
	OK      bool
	Problem string // why not OK
	Records []Record
}

func (s *Step) say(format string, a ...any) { s.Said = append(s.Said, fmt.Sprintf(format, a...)) }

func (s *Step) fail(format string, a ...any) {
	p := fmt.Sprintf(format, a...)
	if s.Problem != "" {
		s.Problem += "; " + p
	} else {
		s.Problem = p
	}
	s.OK = false
}

// TourSteps lists the tour's steps in order (names usable with RunStep).
var TourSteps = []string{"http", "https-bump", "overlap", "splice", "deny", "bad-cert", "imds", "ping", "udp", "quic", "spoof"}

// Tour runs every step, printing each to w (nil: silent) as it finishes.
func (e *Env) Tour(ctx context.Context, w io.Writer) []Step {
	var steps []Step
	for i, name := range TourSteps {
		if ctx.Err() != nil {
			break
		}
		if w != nil {
			fmt.Fprintf(w, "\n[%d/%d] ", i+1, len(TourSteps))
		}
		s := e.RunStep(ctx, name, w)
		steps = append(steps, s)
	}
	return steps
}

// RunStep runs one named step and prints it to w (nil: silent).
func (e *Env) RunStep(ctx context.Context, name string, w io.Writer) Step {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	var s Step
	s.Name, s.OK = name, true
	fns := map[string]func(context.Context, *Step, io.Writer){
		"http":       e.stepHTTP,
		"https-bump": e.stepBump,
		"overlap":    e.stepOverlap,
		"splice":     e.stepSplice,
		"deny":       e.stepDeny,
		"bad-cert":   e.stepBadCert,
		"imds":       e.stepIMDS,
		"ping":       e.stepPing,
		"udp":        e.stepUDP,
		"quic":       e.stepQUIC,
		"spoof":      e.stepSpoof,
	}
	fn, ok := fns[name]
	if !ok {
		s.Title = name
		s.fail("no such step")
	} else {
		fn(ctx, &s, w)
	}
	if w != nil {
		printStep(w, &s)
	}
	return s
}

func title(s *Step, w io.Writer, t string) {
	s.Title = t
	if w != nil {
		fmt.Fprintf(w, "%s ... ", t)
	}
}

func printStep(w io.Writer, s *Step) {
	if s.OK {
		fmt.Fprintln(w, "ok")
	} else {
		fmt.Fprintln(w, "UNEXPECTED")
	}
	for _, l := range s.Said {
		fmt.Fprintf(w, "    %s\n", l)
	}
	if !s.OK {
		fmt.Fprintf(w, "    problem: %s\n", s.Problem)
	}
	for _, r := range s.Records {
		fmt.Fprintf(w, "    record: %s\n", r.Raw)
	}
}

// recordFor waits for the record of res's connection (Record.Of) through
// endpoint ep and checks it with want (field -> expected value; a value of
// "*" means "not empty").
func (e *Env) recordFor(ctx context.Context, s *Step, ep uint64, res Result, want map[string]string) {
	if !res.Local.IsValid() || !res.Remote.IsValid() {
		s.fail("no addresses for the connection, cannot find its record")
		return
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	epID := EndpointOf(ep)
	recs, err := e.Records.Wait(wctx, 1, func(r *Record) bool {
		return r.EndpointID == epID && r.Of(res)
	})
	if err != nil {
		s.fail("no record from %s for %s -> %s: %v", epID, res.Local, res.Remote, err)
		return
	}
	r := recs[len(recs)-1]
	s.Records = append(s.Records, r)
	if missing := MissingFields(&r); len(missing) > 0 {
		s.fail("record lacks fields %v", missing)
	}
	for k, v := range want {
		got := r.Field(k)
		if v == "*" && got == "" || v != "*" && got != v {
			s.fail("record %s = %q, want %q", k, got, v)
		}
	}
}

// MissingFields lists contract fields absent from r.
func MissingFields(r *Record) []string {
	have := map[string]bool{}
	for _, k := range r.Keys {
		have[k] = true
	}
	var missing []string
	fields := RecordFields
	if strings.HasPrefix(r.RecordType, "flow") {
		fields = FlowRecordFields
		if r.RecordType == flowlog.TypeSummary {
			fields = FlowSummaryFields
		}
	}
	for _, k := range fields {
		if !have[k] {
			missing = append(missing, k)
		}
	}
	return missing
}

func (e *Env) get(ctx context.Context, s *Step, i int, url string) Result {
	c := e.Clients[i]
	r := c.Get(ctx, url)
	if r.Err != nil {
		s.fail("GET %s from %s: %v", url, c.Name, r.Err)
	}
	return r
}

func firstLine(b string) string {
	b = strings.TrimSpace(b)
	if i := strings.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	if len(b) > 160 {
		b = b[:160] + "…"
	}
	return b
}

func (e *Env) stepHTTP(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, "Plain HTTP: the client in VPC A fetches http://"+HostApp+"/")
	r := e.get(ctx, s, 0, "http://"+HostApp+"/")
	if r.Err != nil {
		return
	}
	s.say("HTTP %d from %s: %q", r.Status, r.Local, firstLine(r.Body))
	s.say("port 80 was intercepted (TPROXY) and the request passed policy rule %q", RuleAllow)
	if r.Status != 200 || !strings.Contains(r.Body, "hello from "+HostApp) {
		s.fail("want 200 and the server's greeting")
	}
	e.recordFor(ctx, s, EndpointA, r, map[string]string{
		"action": "allow", "scheme": "http", "method": "GET", "host": HostApp, "status": "200",
		"dst_ip": AddrApp.String(), "dst_port": "80", "rule": RuleAllow, "user_agent": "gwlbproxy-demo/1",
	})
}

func (e *Env) stepBump(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, "HTTPS, inspected: the client in VPC A fetches https://"+HostApp+"/")
	r := e.get(ctx, s, 0, "https://"+HostApp+"/")
	if r.Err != nil {
		return
	}
	s.say("HTTP %d: %q", r.Status, firstLine(r.Body))
	s.say("the client was shown a certificate for %q issued by %q: the appliance decrypted (bumped) it", r.Subject, r.Issuer)
	if r.Status != 200 || r.Issuer != ApplianceCAName {
		s.fail("want 200 with a leaf issued by %q", ApplianceCAName)
	}
	e.recordFor(ctx, s, EndpointA, r, map[string]string{
		"action": "allow", "scheme": "https", "sni": HostApp, "host": HostApp, "status": "200",
		"dst_ip": AddrApp.String(), "dst_port": "443", "tls_version": "*", "rule": RuleAllow,
	})
}

func (e *Env) stepOverlap(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, "Overlapping VPCs: the client in VPC B, with the same address "+gwlbsim.ClientAddr.String()+", does the same")
	r := e.get(ctx, s, 1, "https://"+HostApp+"/")
	if r.Err != nil {
		return
	}
	s.say("HTTP %d from %s; the record names endpoint B, so the two VPCs are told apart", r.Status, r.Local)
	if r.Status != 200 || r.Issuer != ApplianceCAName {
		s.fail("want 200 with a leaf issued by %q", ApplianceCAName)
	}
	e.recordFor(ctx, s, EndpointB, r, map[string]string{
		"action": "allow", "sni": HostApp, "status": "200", "endpoint_id": EndpointOf(EndpointB),
	})
}

func (e *Env) stepSplice(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, "Spliced: https://"+HostBank+"/ is never decrypted")
	r := e.get(ctx, s, 0, "https://"+HostBank+"/")
	if r.Err != nil {
		return
	}
	s.say("HTTP %d: %q", r.Status, firstLine(r.Body))
	s.say("the client saw the bank's own certificate, issued by %q (rule %q)", r.Issuer, RuleSplice)
	if r.Status != 200 || r.Issuer != InternetCAName {
		s.fail("want 200 with the server's own certificate (issuer %q)", InternetCAName)
	}
	e.recordFor(ctx, s, EndpointA, r, map[string]string{
		"action": "splice", "sni": HostBank, "rule": RuleSplice, "dst_ip": AddrBank.String(),
	})
}

func (e *Env) stepDeny(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, "Denied: https://"+HostBlocked+"/")
	r := e.get(ctx, s, 0, "https://"+HostBlocked+"/")
	if r.Err != nil {
		return
	}
	s.say("HTTP %d, a page from the appliance: %q", r.Status, pageText(r.Body))
	if r.Status != 403 || !strings.Contains(r.Body, RuleDeny) {
		s.fail("want a 403 page naming rule %q", RuleDeny)
	}
	e.recordFor(ctx, s, EndpointA, r, map[string]string{
		"action": "deny", "sni": HostBlocked, "rule": RuleDeny, "status": "403",
	})
}

// stepSpoof: an allowed name sent to an address it does not have.
func (e *Env) stepSpoof(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, "Spoofed Host: http://"+AddrBlocked.String()+"/ with Host "+HostApp+" (an allowed name, another server's address)")
	r := e.Clients[0].GetHost(ctx, "http://"+AddrBlocked.String()+"/", HostApp)
	if r.Err != nil {
		s.fail("GET: %v", r.Err)
		return
	}
	s.say("HTTP %d, a page from the appliance: %q", r.Status, pageText(r.Body))
	s.say("destination binding: %s resolves to %s, not %s, so nothing was forwarded", HostApp, AddrApp, AddrBlocked)
	if r.Status != 403 || !strings.Contains(r.Body, "bind:dst-mismatch") {
		s.fail("want a 403 page naming rule bind:dst-mismatch")
	}
	e.recordFor(ctx, s, EndpointA, r, map[string]string{
		"action": "deny", "host": HostApp, "rule": "bind:dst-mismatch", "status": "403",
		"dst_ip": AddrBlocked.String(), "bind": "mismatch", "bind_answers": AddrApp.String(),
	})
}

func (e *Env) stepBadCert(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, "Bad upstream certificate: https://"+HostExpired+"/ (its certificate expired yesterday)")
	r := e.get(ctx, s, 0, "https://"+HostExpired+"/")
	if r.Err != nil {
		return
	}
	s.say("HTTP %d, an error page instead of the site: %q", r.Status, pageText(r.Body))
	if r.Status != 502 {
		s.fail("want a 502 page")
	}
	e.recordFor(ctx, s, EndpointA, r, map[string]string{
		"action": "error", "sni": HostExpired, "status": "502", "upstream_error": "*",
	})
}

func (e *Env) stepIMDS(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, "Instance metadata: http://"+AddrIMDS.String()+"/latest/meta-data/")
	r := e.get(ctx, s, 0, "http://"+AddrIMDS.String()+"/latest/meta-data/")
	if r.Err != nil {
		return
	}
	s.say("HTTP %d: %q", r.Status, pageText(r.Body))
	if strings.Contains(r.Body, LeakBody) {
		s.fail("the decoy metadata server answered: the request got through")
	}
	if r.Status != 403 {
		s.fail("want 403")
	}
	e.recordFor(ctx, s, EndpointA, r, map[string]string{
		"action": "deny", "dst_ip": AddrIMDS.String(), "status": "403",
	})
	if len(s.Records) > 0 && !strings.HasPrefix(s.Records[0].Rule, "ssrf") {
		s.fail("record rule %q, want the SSRF guard's", s.Records[0].Rule)
	}
}

func (e *Env) counter(ctx context.Context, s *Step, name string) float64 {
	v, err := e.SteerCounter(ctx, name)
	if err != nil {
		s.fail("%v", err)
	}
	return v
}

func (e *Env) stepPing(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, "Ping "+HostEcho+" ("+AddrEcho.String()+") from both VPCs")
	before := e.counter(ctx, s, "forwarded")
	for i, c := range e.Clients {
		rtt, err := c.Ping(ctx, AddrEcho)
		if err != nil {
			s.fail("ping from %s: %v", c.Name, err)
			continue
		}
		s.say("echo reply from %s to %s in %s (endpoint %s)", AddrEcho, c.Name, rtt.Round(time.Microsecond), EndpointOf([]uint64{EndpointA, EndpointB}[i]))
	}
	after := e.counter(ctx, s, "forwarded")
	s.say("not intercepted: the appliance forwarded it (%s); steering's forwarded counter went %v -> %v", e.egressWords(), before, after)
	if after <= before {
		s.fail("forwarded counter did not move")
	}
}

func (e *Env) egressWords() string {
	if e.Net.Mode == "nat" {
		return "out " + EgressInterface + " with masquerade"
	}
	return "back into the tunnel it came from"
}

func (e *Env) stepUDP(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, fmt.Sprintf("UDP exchange with %s:%d", HostEcho, EchoPort))
	msg := []byte("hello over UDP through GWLB")
	got, err := e.Clients[0].UDP(ctx, netip.AddrPortFrom(AddrEcho, EchoPort), msg, time.Second)
	if err != nil {
		s.fail("no echo: %v", err)
		return
	}
	s.say("sent %q, the echo server answered %q (forwarded %s)", msg, got, e.egressWords())
	if !bytes.Equal(got, msg) {
		s.fail("echo differs")
	}
}

func (e *Env) stepQUIC(ctx context.Context, s *Step, w io.Writer) {
	title(s, w, "QUIC (UDP 443) to "+HostApp+" is dropped so browsers fall back to TCP")
	before := e.counter(ctx, s, "quic_dropped")
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	got, err := e.Clients[0].UDP(qctx, netip.AddrPortFrom(AddrApp, 443), []byte("QUIC-ish initial packet"), time.Second)
	if err == nil {
		s.fail("UDP 443 got an answer %q: it was not dropped", got)
		return
	}
	after := e.counter(ctx, s, "quic_dropped")
	s.say("no answer in 3s, although the server echoes UDP 443; steering's quic_dropped counter went %v -> %v", before, after)
	if after <= before {
		s.fail("quic_dropped counter did not move")
	}
}

// pageText extracts a short text from an HTML error page.
func pageText(body string) string {
	var b strings.Builder
	in := false
	for _, r := range body {
		switch {
		case r == '<':
			in = true
		case r == '>':
			in = false
			b.WriteByte(' ')
		case !in:
			b.WriteRune(r)
		}
	}
	t := strings.Join(strings.Fields(b.String()), " ")
	if len(t) > 200 {
		t = t[:200] + "…"
	}
	return t
}
