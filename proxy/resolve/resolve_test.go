package resolve

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// clock is a settable time source for TTL tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTest(t *testing.T, s *testDNS, mod func(*Config)) (*Resolver, *clock) {
	t.Helper()
	c := testConfig(s)
	if mod != nil {
		mod(&c)
	}
	r, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	r.now = clk.now
	return r, clk
}

var (
	ip1 = netip.MustParseAddr("198.18.0.1")
	ip2 = netip.MustParseAddr("198.18.0.2")
	ip6 = netip.MustParseAddr("2001:db8::1")
)

func TestLookupTTLClampAndCache(t *testing.T) {
	s := newTestDNS(t)
	s.records("a.test", "a.test. 60 IN A 198.18.0.1", "a.test. 30 IN AAAA 2001:db8::1")
	s.records("short.test", "short.test. 0 IN A 198.18.0.2")
	s.records("long.test", "long.test. 999999 IN A 198.18.0.2")
	r, clk := newTest(t, s, func(c *Config) { c.MinTTL = 5 * time.Second; c.MaxTTL = time.Hour })
	ctx := context.Background()

	addrs, ttl, err := r.LookupNetIP(ctx, "a.test")
	if err != nil || len(addrs) != 2 || ttl != 30*time.Second {
		t.Fatalf("a.test: %v %v %v", addrs, ttl, err)
	}
	if !contains(addrs, ip1) || !contains(addrs, ip6) {
		t.Fatalf("a.test answers %v", addrs)
	}
	q := s.count("a.test")
	clk.add(10 * time.Second)
	if _, ttl, _ := r.LookupNetIP(ctx, "a.test"); ttl != 20*time.Second || s.count("a.test") != q {
		t.Fatalf("cache: ttl %v, queries %d -> %d", ttl, q, s.count("a.test"))
	}
	clk.add(21 * time.Second)
	r.LookupNetIP(ctx, "a.test")
	if s.count("a.test") == q {
		t.Fatal("expired entry not re-resolved")
	}
	if _, ttl, _ := r.LookupNetIP(ctx, "short.test"); ttl != 5*time.Second {
		t.Fatalf("floor: ttl %v", ttl)
	}
	if _, ttl, _ := r.LookupNetIP(ctx, "long.test"); ttl != time.Hour {
		t.Fatalf("ceiling: ttl %v", ttl)
	}
	if a, _, err := r.LookupNetIP(ctx, "198.18.0.9"); err != nil || len(a) != 1 || a[0].String() != "198.18.0.9" {
		t.Fatalf("literal: %v %v", a, err)
	}
}

func TestNegativeCaching(t *testing.T) {
	s := newTestDNS(t)
	s.rcode("nx.test", dns.RcodeNameError)
	s.records("v4only.test", "v4only.test. 60 IN A 198.18.0.1")
	s.records("nodata.test") // success, empty answer
	r, clk := newTest(t, s, func(c *Config) { c.MinTTL = time.Second; c.NegativeTTL = 30 * time.Second })
	ctx := context.Background()
	_, ttl, err := r.LookupNetIP(ctx, "nx.test")
	if !errors.Is(err, ErrNotFound) || ttl != 7*time.Second { // SOA minimum 7
		t.Fatalf("nx: %v %v", ttl, err)
	}
	n := s.count("nx.test")
	clk.add(6 * time.Second)
	if _, _, err := r.LookupNetIP(ctx, "nx.test"); !errors.Is(err, ErrNotFound) || s.count("nx.test") != n {
		t.Fatalf("negative answer not cached: %v, %d queries", err, s.count("nx.test"))
	}
	if _, _, err := r.LookupNetIP(ctx, "nodata.test"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("nodata: %v", err)
	}
	if a, _, err := r.LookupNetIP(ctx, "v4only.test"); err != nil || len(a) != 1 {
		t.Fatalf("v4 only (AAAA NODATA): %v %v", a, err)
	}
	b, err := r.Bound(ctx, "nx.test", ip1)
	if err != nil || b.Match || len(b.Answers) != 0 {
		t.Fatalf("bound nx: %+v %v", b, err)
	}
}

func TestCNAMEChains(t *testing.T) {
	s := newTestDNS(t)
	s.records("www.test",
		"www.test. 300 IN CNAME edge.cdn.test.",
		"edge.cdn.test. 20 IN CNAME e1.cdn.test.",
		"e1.cdn.test. 300 IN A 198.18.0.1",
		// Not on the chain: must be ignored.
		"evil.test. 300 IN A 198.18.0.66",
		"www.test. 300 IN AAAA 2001:db8::66") // wrong type for an A question only
	r, _ := newTest(t, s, func(c *Config) { c.MinTTL = time.Second })
	a, ttl, err := r.LookupNetIP(context.Background(), "www.test")
	if err != nil {
		t.Fatal(err)
	}
	// AAAA query: the test server answers www.test AAAA directly.
	if !contains(a, ip1) || contains(a, netip.MustParseAddr("198.18.0.66")) || ttl != 20*time.Second {
		t.Fatalf("chain: %v ttl %v", a, ttl)
	}
	// A loop never ends the lookup badly.
	s.records("loop.test", "loop.test. 60 IN CNAME loop2.test.", "loop2.test. 60 IN CNAME loop.test.")
	if _, _, err := r.LookupNetIP(context.Background(), "loop.test"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("loop: %v", err)
	}
	// An over-long chain is cut.
	var rrs []string
	for i := 0; i < 40; i++ {
		rrs = append(rrs, fmt.Sprintf("c%d.test. 60 IN CNAME c%d.test.", i, i+1))
	}
	rrs = append(rrs, "c40.test. 60 IN A 198.18.0.1")
	s.records("c0.test", rrs...)
	if _, _, err := r.LookupNetIP(context.Background(), "c0.test"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("long chain: %v", err)
	}
}

func TestTruncatedFallsBackToTCP(t *testing.T) {
	s := newTestDNS(t)
	var rrs []string
	for i := 0; i < 200; i++ {
		rrs = append(rrs, fmt.Sprintf("big.test. 60 IN A 198.18.%d.%d", i/250, i%250+1))
	}
	s.set("big.test", func(q dns.Question, w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		if q.Qtype == dns.TypeA {
			for _, t := range rrs {
				rr, _ := dns.NewRR(t)
				m.Answer = append(m.Answer, rr)
			}
		}
		if _, udp := w.RemoteAddr().(interface{ Network() string }); udp && w.RemoteAddr().Network() == "udp" {
			m.Truncate(512)
		}
		w.WriteMsg(m)
	})
	r, _ := newTest(t, s, func(c *Config) { c.MaxAddrs = 300 })
	a, _, err := r.LookupNetIP(context.Background(), "big.test")
	if err != nil || len(a) != 200 {
		t.Fatalf("big: %d addrs, %v", len(a), err)
	}
	// The last one is only in the TCP answer.
	b, err := r.Bound(context.Background(), "big.test", netip.MustParseAddr("198.18.0.200"))
	if err != nil || !b.Match || b.Resolved {
		t.Fatalf("bound big: %+v %v", b, err)
	}
	// The cap holds for huge answers.
	r2, _ := newTest(t, s, func(c *Config) { c.MaxAddrs = 10 })
	if a, _, _ := r2.LookupNetIP(context.Background(), "big.test"); len(a) != 10 {
		t.Fatalf("cap: %d", len(a))
	}
}

func TestFailuresFailFastAndAreCached(t *testing.T) {
	s := newTestDNS(t)
	s.rcode("servfail.test", dns.RcodeServerFailure)
	s.set("slow.test", func(dns.Question, dns.ResponseWriter, *dns.Msg) {}) // never answers
	s.records("ok.test", "ok.test. 60 IN A 198.18.0.1")
	r, clk := newTest(t, s, func(c *Config) { c.Timeout = time.Second; c.FailureTTL = 5 * time.Second })
	ctx := context.Background()
	if _, err := r.Bound(ctx, "servfail.test", ip1); err == nil || !strings.Contains(err.Error(), "servfail") {
		t.Fatalf("servfail: %v", err)
	}
	// Many callers of a silent name: one lookup, everybody done in about
	// Timeout, and another name is not held up meanwhile.
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.Bound(ctx, "slow.test", ip1); err != nil {
				failed.Add(1)
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	okStart := time.Now()
	if b, err := r.Bound(ctx, "ok.test", ip1); err != nil || !b.Match {
		t.Fatalf("ok during slow: %+v %v", b, err)
	}
	if d := time.Since(okStart); d > 500*time.Millisecond { // the silent name takes 1 s
		t.Fatalf("another name waited %v behind a silent one", d)
	}
	wg.Wait()
	if failed.Load() != 20 {
		t.Fatalf("%d of 20 failed", failed.Load())
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("silent name took %v", d)
	}
	// A and AAAA each once (singleflight); UDP client does not retry.
	if n := s.count("slow.test"); n > 2 {
		t.Fatalf("silent name queried %d times", n)
	}
	// Cached failure: instant.
	t0 := time.Now()
	if _, err := r.Bound(ctx, "slow.test", ip1); err == nil || time.Since(t0) > 300*time.Millisecond {
		t.Fatalf("cached failure: %v after %v", err, time.Since(t0))
	}
	clk.add(6 * time.Second)
	before := s.count("slow.test")
	r.Bound(ctx, "slow.test", ip1)
	if s.count("slow.test") == before {
		t.Fatal("failure cached beyond failure_ttl")
	}
	// A caller's own deadline ends its wait early.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	clk.add(6 * time.Second)
	t0 = time.Now()
	if _, err := r.Bound(cctx, "slow.test", ip1); err == nil || time.Since(t0) > 600*time.Millisecond {
		t.Fatalf("caller deadline: %v after %v", err, time.Since(t0))
	}
}

func TestSecondServerAfterFailure(t *testing.T) {
	bad := newTestDNS(t)
	bad.rcode("x.test", dns.RcodeRefused)
	good := newTestDNS(t)
	good.records("x.test", "x.test. 60 IN A 198.18.0.1")
	c := testConfig(good)
	c.Servers = []string{bad.addr, good.addr}
	r, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := r.Bound(context.Background(), "x.test", ip1); err != nil || !b.Match {
		t.Fatalf("%+v %v", b, err)
	}
}

func TestBoundRotationRetainAndRequery(t *testing.T) {
	s := newTestDNS(t)
	var serial atomic.Int32
	s.set("rot.test", func(q dns.Question, w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		if q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(fmt.Sprintf("rot.test. 10 IN A 198.18.0.%d", serial.Load()))
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	r, clk := newTest(t, s, func(c *Config) {
		c.Retain = time.Minute
		c.RequeryInterval = 2 * time.Second
	})
	ctx := context.Background()
	serial.Store(1)
	if b, err := r.Bound(ctx, "rot.test", ip1); err != nil || !b.Match || !b.Resolved || b.Requeried {
		t.Fatalf("first: %+v %v", b, err)
	}
	// The answer rotates; within the TTL a miss re-resolves once (the
	// entry is older than requery_interval) and then matches.
	serial.Store(2)
	clk.add(3 * time.Second)
	if b, err := r.Bound(ctx, "rot.test", ip2); err != nil || !b.Match || !b.Requeried {
		t.Fatalf("after rotation: %+v %v", b, err)
	}
	// The first address is retained (TTL passed, within the window).
	clk.add(20 * time.Second)
	if b, err := r.Bound(ctx, "rot.test", ip1); err != nil || !b.Match || b.Resolved {
		t.Fatalf("retained: %+v %v", b, err)
	}
	// A foreign address: re-resolved once, then a mismatch naming answers.
	n := s.count("rot.test")
	other := netip.MustParseAddr("203.0.113.9")
	b, err := r.Bound(ctx, "rot.test", other)
	if err != nil || b.Match || !b.Resolved || !contains(b.Answers, ip1) || !contains(b.Answers, ip2) {
		t.Fatalf("mismatch: %+v %v", b, err)
	}
	if s.count("rot.test") == n {
		t.Fatal("miss did not re-resolve")
	}
	// Within requery_interval another miss is answered from the cache.
	n = s.count("rot.test")
	if b, err := r.Bound(ctx, "rot.test", other); err != nil || b.Match || b.Resolved || s.count("rot.test") != n {
		t.Fatalf("requery interval: %+v %v (%d queries)", b, err, s.count("rot.test")-n)
	}
	// Past the window the old address is gone.
	clk.add(2 * time.Minute)
	serial.Store(3)
	if b, err := r.Bound(ctx, "rot.test", ip1); err != nil || b.Match {
		t.Fatalf("after window: %+v %v", b, err)
	}
}

func TestBoundResolverDownKeepsRetained(t *testing.T) {
	s := newTestDNS(t)
	s.records("keep.test", "keep.test. 10 IN A 198.18.0.1")
	r, clk := newTest(t, s, func(c *Config) { c.Retain = time.Minute })
	ctx := context.Background()
	if b, err := r.Bound(ctx, "keep.test", ip1); err != nil || !b.Match {
		t.Fatal(b, err)
	}
	s.set("keep.test", func(dns.Question, dns.ResponseWriter, *dns.Msg) {}) // resolver goes silent
	clk.add(30 * time.Second)
	if b, err := r.Bound(ctx, "keep.test", ip1); err != nil || !b.Match {
		t.Fatalf("retained while resolver down: %+v %v", b, err)
	}
	if _, err := r.Bound(ctx, "keep.test", ip2); err == nil {
		t.Fatal("unknown address with resolver down: no error")
	}
}

func TestBoundLiteral(t *testing.T) {
	s := newTestDNS(t)
	r, _ := newTest(t, s, nil)
	if b, err := r.Bound(context.Background(), "198.18.0.1", ip1); err != nil || !b.Match {
		t.Fatal(b, err)
	}
	if b, err := r.Bound(context.Background(), "2001:db8::1", netip.MustParseAddr("::ffff:198.18.0.1")); err != nil || b.Match || len(b.Answers) != 1 {
		t.Fatal(b, err)
	}
	if s.queries.Load() != 0 {
		t.Fatal("literal sent a query")
	}
}

func TestHostileNamesAndAnswers(t *testing.T) {
	s := newTestDNS(t)
	// Answer for another question.
	s.set("wrongq.test", func(q dns.Question, w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Question[0].Name = "other.test."
		rr, _ := dns.NewRR("other.test. 60 IN A 198.18.0.1")
		m.Answer = append(m.Answer, rr)
		w.WriteMsg(m)
	})
	// Garbage bytes.
	s.set("garbage.test", func(q dns.Question, w dns.ResponseWriter, req *dns.Msg) {
		w.Write([]byte{0xde, 0xad, 0xbe, 0xef})
	})
	r, _ := newTest(t, s, func(c *Config) { c.Timeout = 150 * time.Millisecond })
	ctx := context.Background()
	for _, name := range []string{"wrongq.test", "garbage.test", "bad name.test", "a..test", strings.Repeat("a", 64) + ".test", strings.Repeat("a.", 130) + "test", "", "x\x00.test"} {
		b, err := r.Bound(ctx, name, ip1)
		if b.Match {
			t.Errorf("%q: matched", name)
		}
		if err == nil && name != "" {
			t.Errorf("%q: no error", name)
		}
	}
}

func TestCacheBound(t *testing.T) {
	s := newTestDNS(t)
	for i := 0; i < 50; i++ {
		s.records(fmt.Sprintf("n%d.test", i), fmt.Sprintf("n%d.test. 60 IN A 198.18.0.1", i))
	}
	r, _ := newTest(t, s, func(c *Config) { c.MaxNames = 10 })
	for i := 0; i < 50; i++ {
		r.Bound(context.Background(), fmt.Sprintf("n%d.test", i), ip1)
	}
	r.mu.Lock()
	n := len(r.cache)
	r.mu.Unlock()
	if n > 10 {
		t.Fatalf("cache holds %d names, max 10", n)
	}
}

func TestResolvConfAndValidation(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "resolv.conf")
	os.WriteFile(p, []byte("search example.internal\nnameserver 198.18.0.53\nnameserver fd00::53\noptions ndots:5\n"), 0o644)
	c := DefaultConfig()
	c.ResolvConf = p
	r, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.ServerList(); strings.Join(got, ",") != "198.18.0.53:53,[fd00::53]:53" || err != nil {
		t.Fatalf("servers %v %v", got, err)
	}
	// A file without nameservers (or none at all) does not stop New; every
	// lookup fails, closed, until the file is fixed, and is read again
	// when it changes.
	os.WriteFile(p, []byte("# nothing\n"), 0o644)
	r, err = New(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ServerList(); err == nil || !strings.Contains(err.Error(), "no nameserver") {
		t.Fatalf("empty resolv.conf: %v", err)
	}
	if _, err := r.Bound(context.Background(), "x.test", ip1); err == nil || !strings.Contains(err.Error(), "no nameserver") {
		t.Fatalf("bound with empty resolv.conf: %v", err)
	}
	s := newTestDNS(t)
	s.records("x.test", "x.test. 60 IN A 198.18.0.1")
	host, port, _ := strings.Cut(s.addr, ":")
	os.WriteFile(p, []byte("nameserver "+host+"\noptions port:"+port+"\n"), 0o644)
	os.Chtimes(p, time.Now(), time.Now().Add(time.Second))
	r.mu.Lock()
	r.cache = map[string]*entry{} // forget the cached failure
	r.mu.Unlock()
	if got, err := r.ServerList(); err != nil || len(got) != 1 {
		t.Fatalf("after fixing resolv.conf: %v %v", got, err)
	}
	c.ResolvConf = filepath.Join(dir, "missing")
	r, _ = New(c)
	if _, err := r.ServerList(); err == nil {
		t.Fatal("missing resolv.conf: no error")
	}
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Servers = []string{"dns.example"} }, "servers[0]"},
		{func(c *Config) { c.Servers = []string{"198.18.0.1:0"} }, "servers[0]"},
		{func(c *Config) { c.Timeout = 0 }, "timeout"},
		{func(c *Config) { c.MinTTL = 2 * time.Hour }, "min_ttl"},
		{func(c *Config) { c.MaxNames = 0 }, "max_names"},
		{func(c *Config) { c.MaxAddrs = 0 }, "max_addrs"},
		{func(c *Config) { c.ResolvConf = "" }, "resolv_conf"},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("want %s error, got %v", tc.want, err)
		}
	}
	c = DefaultConfig()
	c.Servers = []string{"198.18.0.1", "[2001:db8::1]:5353"}
	r, err = New(c)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := r.ServerList(); strings.Join(got, ",") != "198.18.0.1:53,[2001:db8::1]:5353" {
		t.Fatalf("servers: %v", got)
	}
}

// FuzzChase feeds arbitrary DNS messages to the answer parser.
func FuzzChase(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("a.test.", dns.TypeA)
	for _, t := range []string{"a.test. 60 IN CNAME b.test.", "b.test. 60 IN A 198.18.0.1", "a.test. 1 IN AAAA ::1"} {
		rr, _ := dns.NewRR(t)
		m.Answer = append(m.Answer, rr)
	}
	b, _ := m.Pack()
	f.Add(b, "a.test.")
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		m := new(dns.Msg)
		if m.Unpack(data) != nil {
			return
		}
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			a := chase(m, name, qt)
			for _, ip := range a.addrs {
				if !ip.IsValid() || ip.Is4In6() {
					t.Fatalf("bad address %v", ip)
				}
			}
		}
		soaTTL(m)
	})
}

func BenchmarkBoundHit(b *testing.B) {
	s := newTestDNS(b)
	s.records("hit.test", "hit.test. 3600 IN A 198.18.0.1")
	c := testConfig(s)
	r, err := New(c)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if bd, err := r.Bound(ctx, "hit.test", ip1); err != nil || !bd.Match {
		b.Fatal(bd, err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if bd, _ := r.Bound(ctx, "hit.test", ip1); !bd.Match {
			b.Fatal("miss")
		}
	}
}

// More names at once than max_inflight: the excess fails at once, the
// others are resolved, and the failure is not cached.
func TestMaxInflight(t *testing.T) {
	s := newTestDNS(t)
	release := make(chan struct{})
	for i := 0; i < 4; i++ {
		s.set(fmt.Sprintf("w%d.test", i), func(q dns.Question, w dns.ResponseWriter, req *dns.Msg) {
			<-release
			m := new(dns.Msg)
			m.SetReply(req)
			if q.Qtype == dns.TypeA {
				rr, _ := dns.NewRR(q.Name + " 60 IN A 198.18.0.1")
				m.Answer = append(m.Answer, rr)
			}
			w.WriteMsg(m)
		})
	}
	r, _ := newTest(t, s, func(c *Config) { c.MaxInflight = 2; c.Timeout = 2 * time.Second })
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i] = r.Bound(ctx, fmt.Sprintf("w%d.test", i), ip1) }()
	}
	for s.count("w0.test") == 0 || s.count("w1.test") == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	t0 := time.Now()
	if _, err := r.Bound(ctx, "w2.test", ip1); err == nil || !strings.Contains(err.Error(), "in flight") || time.Since(t0) > time.Second {
		t.Fatalf("over max_inflight: %v after %v", err, time.Since(t0))
	}
	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("w%d: %v", i, err)
		}
	}
	if b, err := r.Bound(ctx, "w2.test", ip1); err != nil || !b.Match {
		t.Fatalf("after the flood: %+v %v", b, err)
	}
}

// Two resolvers on one registry share their series.
func TestMetricsShared(t *testing.T) {
	s := newTestDNS(t)
	s.records("m.test", "m.test. 60 IN A 198.18.0.1")
	reg := prometheus.NewRegistry()
	c := testConfig(s)
	c.Registerer = reg
	r1, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	r1.Bound(context.Background(), "m.test", ip1)
	r2.Bound(context.Background(), "m.test", ip1)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var queries float64
	for _, mf := range mfs {
		if mf.GetName() == "gwlbproxy_resolve_queries_total" {
			for _, m := range mf.GetMetric() {
				queries += m.GetCounter().GetValue()
			}
		}
	}
	if queries != 4 { // A and AAAA from each
		t.Fatalf("queries %v, want 4", queries)
	}
}
