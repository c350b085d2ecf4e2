package resolve

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/gwlbproxy/gwlbproxy/proxy/resolve/dnstest"
)

// testDNS is an in-process DNS server (UDP and TCP on loopback) whose
// answers a test sets per name.
type testDNS struct {
	addr    string
	udp     *dns.Server
	tcp     *dns.Server
	mu      sync.Mutex
	handler map[string]func(q dns.Question, w dns.ResponseWriter, req *dns.Msg)
	queries atomic.Int64
	perName sync.Map // name -> *atomic.Int64
}

func newTestDNS(t testing.TB) *testDNS {
	t.Helper()
	pc, l, err := dnstest.ListenPair("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testDNS{addr: pc.LocalAddr().String(), handler: map[string]func(dns.Question, dns.ResponseWriter, *dns.Msg){}}
	h := dns.HandlerFunc(s.serve)
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: l, Handler: h}
	var started sync.WaitGroup
	started.Add(2)
	s.udp.NotifyStartedFunc = started.Done
	s.tcp.NotifyStartedFunc = started.Done
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	started.Wait()
	t.Cleanup(func() { s.udp.Shutdown(); s.tcp.Shutdown() })
	return s
}

func (s *testDNS) count(name string) int64 {
	v, ok := s.perName.Load(dns.Fqdn(name))
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

func (s *testDNS) set(name string, f func(q dns.Question, w dns.ResponseWriter, req *dns.Msg)) {
	s.mu.Lock()
	s.handler[dns.Fqdn(name)] = f
	s.mu.Unlock()
}

// records answers name with rrs (text form, owner names as written).
func (s *testDNS) records(name string, rrs ...string) {
	s.set(name, func(q dns.Question, w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		for _, t := range rrs {
			rr, err := dns.NewRR(t)
			if err != nil {
				panic(err)
			}
			if rr.Header().Rrtype == q.Qtype || rr.Header().Rrtype == dns.TypeCNAME {
				m.Answer = append(m.Answer, rr)
			}
		}
		w.WriteMsg(m)
	})
}

func (s *testDNS) rcode(name string, rc int) {
	s.set(name, func(q dns.Question, w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(req, rc)
		if rc == dns.RcodeNameError {
			soa, _ := dns.NewRR("test. 3600 IN SOA ns.test. host.test. 1 3600 600 86400 7")
			m.Ns = append(m.Ns, soa)
		}
		w.WriteMsg(m)
	})
}

func (s *testDNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	v, _ := s.perName.LoadOrStore(name, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	s.mu.Lock()
	f := s.handler[name]
	s.mu.Unlock()
	if f == nil {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeNameError)
		w.WriteMsg(m)
		return
	}
	f(q, w, req)
}

// testConfig points a resolver at s with short timeouts.
func testConfig(s *testDNS) Config {
	c := DefaultConfig()
	c.Servers = []string{s.addr}
	c.Timeout = 300 * time.Millisecond
	c.MinTTL = 0
	return c
}
