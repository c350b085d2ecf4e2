package e2e

import (
	"bytes"
	"context"
	be "encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/demo"
	"github.com/gwlbproxy/gwlbproxy/tunnel/inns"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// TestBrowsers loads a bumped HTTPS page with real browsers — Chromium and
// Firefox ESR from Debian's packages, headless, the appliance CA in their
// own NSS trust stores — from a client VPC through the GWLB tunnel and the
// appliance, whose policy denies by default and allows the demo sites
// (ech_action left at its default). Go clients and curl never send what
// browsers send; so the test also captures each browser's ClientHello on
// the client's link and checks it carries what made browsers fail before
// or what Go clients lack: an encrypted_client_hello extension (GREASE
// ECH), a post-quantum X25519MLKEM768 key share making the hello larger
// than one TCP segment (the client link has an internet-like 1500-byte
// MTU and one segment per packet, so every segment is seen), GREASE values
// (Chromium) and h2 in ALPN. The page must arrive (Chromium's DOM; the
// origin server sees the request with the browser's User-Agent) and the
// request's record must say allow, bumped over TLS 1.3 with h2.
func TestBrowsers(t *testing.T) {
	type browser struct {
		name, bin, ua string
		run           func(ctx context.Context, t *testing.T, e *demo.Env, url string) (string, error)
	}
	all := []browser{
		{"chromium", "chromium", "Chrome/", runChromium},
		{"firefox", "firefox-esr", "Firefox/", runFirefox},
	}
	var have []browser
	for _, b := range all {
		if _, err := exec.LookPath(b.bin); err != nil {
			t.Logf("%s not installed (Debian package %s; .ci/run installs it): not tested", b.bin, b.bin)
			continue
		}
		have = append(have, b)
	}
	if _, err := exec.LookPath("certutil"); err != nil || len(have) == 0 {
		t.Skip("browser e2e: needs chromium and/or firefox-esr and certutil (libnss3-tools); .ci/run installs them")
	}
	e := newEnv(t, steer.EgressNAT, nil, false)
	cl := e.Clients[0]
	// An internet-like path: 1500-byte MTU (MSS 1460) instead of GWLB's
	// 8500, and no GSO on the client link so the capture sees segments.
	link, err := cl.NS.Netlink().LinkByName("c0")
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.NS.Netlink().LinkSetMTU(link, 1500); err != nil {
		t.Fatal(err)
	}
	if err := cl.NS.Netlink().LinkSetGSOMaxSegs(link, 1); err != nil {
		t.Fatal(err)
	}

	var (
		seenMu sync.Mutex
		seen   []*http.Request
	)
	e.Net.Internet.Observe(func(r *http.Request) {
		seenMu.Lock()
		seen = append(seen, r.Clone(context.Background()))
		seenMu.Unlock()
	})
	t.Cleanup(func() { e.Net.Internet.Observe(nil) })

	for _, b := range have {
		t.Run(b.name, func(t *testing.T) {
			path := "/browser/" + b.name
			url := "https://" + demo.HostApp + path
			capt, err := startCapture(cl.NS)
			if err != nil {
				t.Fatal(err)
			}
			ctx := testCtx(t, 2*time.Minute)
			out, runErr := b.run(ctx, t, e, url)
			flows := capt.stop()
			if runErr != nil {
				t.Fatalf("%s: %v", b.name, runErr)
			}
			if b.name == "chromium" && !strings.Contains(out, "hello from "+demo.HostApp+" over https") {
				t.Errorf("page content not in Chromium's DOM: %.400q", out)
			}
			if b.name == "chromium" {
				// A site the policy denies: the browser shows the 403 page
				// (over a leaf it trusts) naming the rule; nothing reaches
				// the site.
				out, err := runChromium(ctx, t, e, "https://"+demo.HostBlocked+"/browser/denied")
				if err != nil {
					t.Fatalf("chromium, denied site: %v", err)
				}
				if !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, "denied by rule "+demo.RuleDeny) {
					t.Errorf("deny page not in Chromium's DOM: %.600q", out)
				}
				if _, err := e.Records.Wait(testCtx(t, 20*time.Second), 1, func(r *demo.Record) bool {
					return r.SNI == demo.HostBlocked && r.Path == "/browser/denied" && r.Action == "deny" && r.Rule == demo.RuleDeny && r.Status == 403
				}); err != nil {
					t.Errorf("record of the denied page: %v", err)
				}
			}

			// The origin received the request, with the browser's User-Agent.
			var got *http.Request
			seenMu.Lock()
			for _, r := range seen {
				if r.URL.Path == path {
					got = r
				}
				if r.Host == demo.HostBlocked {
					t.Errorf("the denied site received %s %s", r.Method, r.URL)
				}
			}
			seenMu.Unlock()
			if got == nil {
				t.Errorf("the origin server never received GET %s", path)
			} else if ua := got.Header.Get("User-Agent"); !strings.Contains(ua, b.ua) {
				t.Errorf("origin saw User-Agent %q, want %s's", ua, b.name)
			}

			// The record: allowed by the demo rule, bumped (TLS 1.3, h2).
			recs, err := e.Records.Wait(testCtx(t, 20*time.Second), 1, func(r *demo.Record) bool {
				return r.Path == path && r.Host == demo.HostApp
			})
			if err != nil {
				t.Fatalf("record of GET %s: %v", path, err)
			}
			r := recs[0]
			if r.Action != "allow" || r.Rule != demo.RuleAllow || r.Status != 200 || r.SNI != demo.HostApp ||
				r.TLSVersion != "TLSv1.3" || r.ALPN != "h2" || r.Scheme != "https" || !strings.Contains(r.UserAgent, b.ua) {
				t.Errorf("record: want allow/%s 200 bumped TLSv1.3 h2 with sni %s and the browser's UA, got %s", demo.RuleAllow, demo.HostApp, r.Raw)
			}
			// (Browsers also open connections they never use, recorded
			// as "client sent no complete request"; none may be denied.)
			for _, rr := range e.Records.All() {
				if rr.SNI == demo.HostApp && rr.Action == "deny" {
					t.Errorf("a connection to %s was denied: %s", demo.HostApp, rr.Raw)
				}
			}

			// What the browser sent.
			var hellos []helloInfo
			for _, f := range flows {
				h, err := parseHello(f.stream)
				if err != nil {
					t.Logf("flow from port %d: %v", f.port, err)
					continue
				}
				h.segments = f.segmentsFor(h.length)
				if h.sni == demo.HostApp {
					hellos = append(hellos, h)
				}
			}
			if len(hellos) == 0 {
				t.Fatalf("captured no ClientHello for %s (%d flows to port 443)", demo.HostApp, len(flows))
			}
			for _, h := range hellos {
				t.Logf("%s ClientHello: %d bytes in %d TCP segments; key shares %04x; ALPN %v; ECH %v; GREASE %v",
					b.name, h.length, h.segments, h.keyShares, h.alpn, h.has(extECH), h.grease())
				if !slices.Contains(h.keyShares, groupX25519MLKEM768) {
					t.Errorf("%s sent no X25519MLKEM768 key share (shares %04x)", b.name, h.keyShares)
				}
				if h.length <= 1460 || h.segments < 2 {
					t.Errorf("%s ClientHello of %d bytes came in %d segment(s); want one spanning several", b.name, h.length, h.segments)
				}
				if !h.has(extECH) {
					t.Errorf("%s sent no encrypted_client_hello extension", b.name)
				}
				if !slices.Contains(h.alpn, "h2") {
					t.Errorf("%s did not offer h2 (ALPN %v)", b.name, h.alpn)
				}
				if b.name == "chromium" && !h.grease() {
					t.Errorf("chromium sent no GREASE values")
				}
			}
		})
	}
}

// browserEnv is a child environment with its own HOME (NSS keeps
// Chromium's trust store under ~/.pki/nssdb).
func browserEnv(home string) []string {
	return []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "LANG=C.UTF-8", "TMPDIR=" + home}
}

// trustCA makes a fresh NSS database in dir trusting the appliance CA for
// TLS servers, with certutil as an administrator would.
func trustCA(ctx context.Context, dir, caFile string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-N", "-d", "sql:" + dir, "--empty-password"},
		{"-A", "-d", "sql:" + dir, "-n", "gwlbproxy demo CA", "-t", "C,,", "-i", caFile},
	} {
		if out, err := exec.CommandContext(ctx, "certutil", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("certutil %v: %v: %s", args, err, out)
		}
	}
	return nil
}

// runInClient runs cmd in the client namespace (forked from a thread in
// it) in its own process group, which is killed when it ends or at ctx's
// end; it returns stdout, and stderr's tail on failure.
func runInClient(ctx context.Context, e *demo.Env, cmd *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.Clients[0].NS.Do(cmd.Start); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	// The browser's helpers (zygote, content processes) share its group.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if ctx.Err() != nil {
		<-done
	}
	if err != nil {
		tail := stderr.String()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return stdout.String(), fmt.Errorf("%s: %w; stderr: %s", filepath.Base(cmd.Path), err, tail)
	}
	return stdout.String(), nil
}

// chromiumHostRules maps every demo name to its address; every other
// name fails to resolve.
func chromiumHostRules() string {
	var rules []string
	for name, a := range demo.Names {
		rules = append(rules, "MAP "+name+" "+a.String())
	}
	return strings.Join(append(rules, "MAP * ~NOTFOUND"), ", ")
}

func runChromium(ctx context.Context, t *testing.T, e *demo.Env, url string) (string, error) {
	home := t.TempDir()
	if err := trustCA(ctx, filepath.Join(home, ".pki", "nssdb"), e.Files.ApplianceCA); err != nil {
		return "", err
	}
	cmd := exec.Command("chromium",
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+filepath.Join(home, "profile"),
		// No DNS in the client VPC: the test site resolves to its
		// address, every other name fails.
		"--host-resolver-rules="+chromiumHostRules(),
		"--virtual-time-budget=5000", "--dump-dom", url)
	cmd.Env = browserEnv(home)
	return runInClient(ctx, e, cmd)
}

// firefoxPrefs keep a fresh headless profile quiet and on TCP: no DoH, no
// HTTP/3, no update, telemetry, safe-browsing or captive-portal traffic;
// every name resolves to the test site (there is no DNS in the VPC).
var firefoxPrefs = map[string]any{
	"network.dns.forceResolve":                   demo.AddrApp.String(),
	"network.trr.mode":                           5,
	"network.http.http3.enable":                  false,
	"network.captive-portal-service.enabled":     false,
	"network.connectivity-service.enabled":       false,
	"network.prefetch-next":                      false,
	"network.dns.disablePrefetch":                true,
	"network.http.speculative-parallel-limit":    0,
	"app.update.enabled":                         false,
	"app.update.auto":                            false,
	"browser.shell.checkDefaultBrowser":          false,
	"browser.startup.homepage_override.mstone":   "ignore",
	"browser.safebrowsing.malware.enabled":       false,
	"browser.safebrowsing.phishing.enabled":      false,
	"browser.safebrowsing.downloads.enabled":     false,
	"browser.safebrowsing.update.enabled":        false,
	"datareporting.healthreport.uploadEnabled":   false,
	"datareporting.policy.dataSubmissionEnabled": false,
	"toolkit.telemetry.enabled":                  false,
	"extensions.update.enabled":                  false,
	"extensions.getAddons.cache.enabled":         false,
	"extensions.systemAddon.update.enabled":      false,
	"services.settings.server":                   "https://127.0.0.1:1/",
	"security.OCSP.enabled":                      0,
	"security.enterprise_roots.enabled":          false,
	"browser.newtabpage.enabled":                 false,
	"browser.aboutwelcome.enabled":               false,
}

func runFirefox(ctx context.Context, t *testing.T, e *demo.Env, url string) (string, error) {
	home, profile := t.TempDir(), t.TempDir()
	if err := trustCA(ctx, profile, e.Files.ApplianceCA); err != nil {
		return "", err
	}
	var js strings.Builder
	for k, v := range firefoxPrefs {
		switch v := v.(type) {
		case string:
			fmt.Fprintf(&js, "user_pref(%q, %q);\n", k, v)
		default:
			fmt.Fprintf(&js, "user_pref(%q, %v);\n", k, v)
		}
	}
	if err := os.WriteFile(filepath.Join(profile, "user.js"), []byte(js.String()), 0o644); err != nil {
		return "", err
	}
	shot := filepath.Join(home, "page.png")
	cmd := exec.Command("firefox-esr", "--headless", "--no-remote", "--profile", profile, "--screenshot", shot, url)
	cmd.Env = append(browserEnv(home), "MOZ_HEADLESS=1")
	out, err := runInClient(ctx, e, cmd)
	if err != nil {
		return out, err
	}
	// --screenshot exits once the page has loaded and been drawn.
	if st, err := os.Stat(shot); err != nil || st.Size() == 0 {
		return out, fmt.Errorf("firefox wrote no screenshot of the page: %v", err)
	}
	return out, nil
}

// A packet capture on the client's link (AF_PACKET, cooked: IP packets),
// keeping the payload of TCP segments sent to port 443, per flow.

type segment struct {
	seq  uint32
	data []byte
}

type tcpFlow struct {
	port   uint16
	segs   []segment
	stream []byte // the payload in sequence order from the first segment
}

// segmentsFor counts the segments that carried the first n bytes.
func (f *tcpFlow) segmentsFor(n int) int {
	if len(f.segs) == 0 {
		return 0
	}
	start, c := f.segs[0].seq, 0
	for _, s := range f.segs {
		off := int(s.seq - start)
		if off < n && len(s.data) > 0 {
			c++
		}
	}
	return c
}

type capture struct {
	fd   int
	mu   sync.Mutex
	byP  map[uint16]*tcpFlow
	quit chan struct{}
	done chan struct{}
}

func startCapture(ns *inns.NS) (*capture, error) {
	c := &capture{byP: map[uint16]*tcpFlow{}, quit: make(chan struct{}), done: make(chan struct{})}
	// ETH_P_ALL: sockets bound to one protocol see only incoming packets.
	proto := int((unix.ETH_P_ALL&0xff)<<8 | unix.ETH_P_ALL>>8) // htons
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("capture socket: %w", err)
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, err
	}
	_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	_ = unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	go c.loop()
	return c, nil
}

func (c *capture) loop() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.quit:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		c.packet(buf[:n])
	}
}

func (c *capture) packet(b []byte) {
	if len(b) < 20 || b[0]>>4 != 4 || b[9] != unix.IPPROTO_TCP {
		return
	}
	ihl := int(b[0]&0xf) * 4
	total := int(be.BigEndian.Uint16(b[2:4]))
	if total > len(b) || ihl+20 > total {
		return
	}
	tcp := b[ihl:total]
	sport, dport := be.BigEndian.Uint16(tcp[0:2]), be.BigEndian.Uint16(tcp[2:4])
	off := int(tcp[12]>>4) * 4
	if dport != 443 || off > len(tcp) || len(tcp) == off {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.byP[sport]
	if f == nil {
		f = &tcpFlow{port: sport}
		c.byP[sport] = f
	}
	f.segs = append(f.segs, segment{seq: be.BigEndian.Uint32(tcp[4:8]), data: append([]byte(nil), tcp[off:]...)})
}

// stop ends the capture and returns each flow's segments (retransmissions
// dropped) and reassembled stream.
func (c *capture) stop() []*tcpFlow {
	close(c.quit)
	<-c.done
	unix.Close(c.fd)
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*tcpFlow
	for _, f := range c.byP {
		slices.SortStableFunc(f.segs, func(a, b segment) int { return int(int32(a.seq - b.seq)) })
		var segs []segment
		start := f.segs[0].seq
		for _, s := range f.segs {
			off := int(s.seq - start)
			if off < len(f.stream) {
				if off+len(s.data) <= len(f.stream) {
					continue // retransmission
				}
				s.data = s.data[len(f.stream)-off:]
				off = len(f.stream)
			}
			if off > len(f.stream) {
				break // a gap: the capture missed a segment
			}
			f.stream = append(f.stream, s.data...)
			segs = append(segs, s)
		}
		f.segs = segs
		out = append(out, f)
	}
	return out
}

// What a ClientHello carried, parsed from the wire.

const (
	extSNI              = 0
	extSupportedGroups  = 10
	extALPN             = 16
	extKeyShare         = 51
	extECH              = 0xfe0d
	groupX25519MLKEM768 = 0x11ec
)

type helloInfo struct {
	length    int // TLS record bytes (header included)
	segments  int
	sni       string
	suites    []uint16
	exts      []uint16
	groups    []uint16
	keyShares []uint16
	alpn      []string
}

func (h *helloInfo) has(ext uint16) bool { return slices.Contains(h.exts, ext) }

// grease reports a GREASE value (RFC 8701: 0x?a?a with equal bytes) among
// the cipher suites, extensions or groups.
func (h *helloInfo) grease() bool {
	is := func(v uint16) bool { return v&0x0f0f == 0x0a0a && v>>8 == v&0xff }
	return slices.ContainsFunc(h.suites, is) || slices.ContainsFunc(h.exts, is) || slices.ContainsFunc(h.groups, is)
}

// rd is a bounds-checked big-endian reader.
type rd struct {
	b   []byte
	bad bool
}

func (r *rd) bytes(n int) []byte {
	if r.bad || n > len(r.b) {
		r.bad = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *rd) u8() int {
	b := r.bytes(1)
	if b == nil {
		return 0
	}
	return int(b[0])
}
func (r *rd) u16() int {
	b := r.bytes(2)
	if b == nil {
		return 0
	}
	return int(be.BigEndian.Uint16(b))
}
func (r *rd) vec8() *rd  { return &rd{b: r.bytes(r.u8()), bad: r.bad} }
func (r *rd) vec16() *rd { return &rd{b: r.bytes(r.u16()), bad: r.bad} }

// parseHello parses the single-record ClientHello at the start of stream.
func parseHello(stream []byte) (helloInfo, error) {
	var h helloInfo
	if len(stream) < 5 || stream[0] != 22 {
		return h, errors.New("does not start with a handshake record")
	}
	n := int(be.BigEndian.Uint16(stream[3:5]))
	if len(stream) < 5+n {
		return h, fmt.Errorf("hello record of %d bytes, captured %d", n, len(stream)-5)
	}
	h.length = 5 + n
	r := &rd{b: stream[5 : 5+n]}
	if r.u8() != 1 {
		return h, errors.New("not a ClientHello")
	}
	body := &rd{b: r.bytes(int(be.BigEndian.Uint32(append([]byte{0}, r.bytes(3)...))))}
	body.bytes(2 + 32) // legacy_version, random
	body.vec8()        // session id
	cs := body.vec16()
	for len(cs.b) >= 2 {
		h.suites = append(h.suites, uint16(cs.u16()))
	}
	body.vec8() // compression methods
	exts := body.vec16()
	for len(exts.b) >= 4 && !exts.bad {
		typ := uint16(exts.u16())
		data := exts.vec16()
		h.exts = append(h.exts, typ)
		switch typ {
		case extSNI:
			list := data.vec16()
			if list.u8() == 0 {
				h.sni = string(list.vec16().b)
			}
		case extSupportedGroups:
			g := data.vec16()
			for len(g.b) >= 2 {
				h.groups = append(h.groups, uint16(g.u16()))
			}
		case extKeyShare:
			ks := data.vec16()
			for len(ks.b) >= 4 && !ks.bad {
				h.keyShares = append(h.keyShares, uint16(ks.u16()))
				ks.vec16()
			}
		case extALPN:
			l := data.vec16()
			for len(l.b) > 0 && !l.bad {
				h.alpn = append(h.alpn, string(l.vec8().b))
			}
		}
	}
	if body.bad || exts.bad {
		return h, errors.New("malformed ClientHello")
	}
	return h, nil
}
