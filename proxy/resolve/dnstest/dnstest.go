// Package dnstest is a small authoritative DNS server (UDP and TCP,
// github.com/miekg/dns) for tests of destination binding: tests set the
// A/AAAA answers of names, rotate them, or make the server go silent.
// Unknown names get NXDOMAIN.
package dnstest

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// Server answers from a table of names. Create with Listen or New.
type Server struct {
	// Addr is the UDP (and TCP) address served.
	Addr string
	udp  *dns.Server
	tcp  *dns.Server

	mu      sync.Mutex
	names   map[string]zone
	silent  atomic.Bool
	queries sync.Map // fqdn -> *atomic.Int64
}

type zone struct {
	ttl   uint32
	addrs []netip.Addr
}

// Listen serves on addr (UDP and TCP on the same port; "127.0.0.1:0"
// picks a free one) in the calling thread's network namespace.
func Listen(addr string) (*Server, error) {
	pc, l, err := ListenPair(addr)
	if err != nil {
		return nil, err
	}
	return New(pc, l), nil
}

// ListenPair opens UDP and TCP on the same address. With port 0 the UDP
// port is picked by the kernel and may be taken for TCP by someone else:
// it then tries again with another port.
func ListenPair(addr string) (net.PacketConn, net.Listener, error) {
	var err error
	for range 20 {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return nil, nil, err
		}
		var l net.Listener
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			return pc, l, nil
		}
		pc.Close()
		if !strings.HasSuffix(addr, ":0") {
			break
		}
	}
	return nil, nil, err
}

// New serves on pc and l (the same address).
func New(pc net.PacketConn, l net.Listener) *Server {
	s := &Server{Addr: pc.LocalAddr().String(), names: map[string]zone{}}
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
	return s
}

// Set makes name resolve to addrs (A for IPv4, AAAA for IPv6) with ttl
// seconds; no addrs makes it NXDOMAIN again.
func (s *Server) Set(name string, ttl uint32, addrs ...netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(addrs) == 0 {
		delete(s.names, dns.Fqdn(strings.ToLower(name)))
		return
	}
	s.names[dns.Fqdn(strings.ToLower(name))] = zone{ttl: ttl, addrs: append([]netip.Addr(nil), addrs...)}
}

// Silent makes the server read queries and answer nothing (a resolver
// that is down or unreachable).
func (s *Server) Silent(on bool) { s.silent.Store(on) }

// Queries returns how many questions (A and AAAA count separately) were
// asked about name.
func (s *Server) Queries(name string) int64 {
	v, ok := s.queries.Load(dns.Fqdn(strings.ToLower(name)))
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// Close stops serving.
func (s *Server) Close() error {
	e1 := s.udp.Shutdown()
	e2 := s.tcp.Shutdown()
	if e1 != nil {
		return e1
	}
	return e2
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	if len(req.Question) != 1 {
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	v, _ := s.queries.LoadOrStore(name, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	if s.silent.Load() {
		return
	}
	s.mu.Lock()
	z, ok := s.names[name]
	s.mu.Unlock()
	if !ok {
		m.SetRcode(req, dns.RcodeNameError)
		w.WriteMsg(m)
		return
	}
	m.SetReply(req)
	m.Authoritative = true
	for _, a := range z.addrs {
		var rr dns.RR
		var err error
		switch {
		case a.Is4() && q.Qtype == dns.TypeA:
			rr, err = dns.NewRR(fmt.Sprintf("%s %d IN A %s", q.Name, z.ttl, a))
		case a.Is6() && q.Qtype == dns.TypeAAAA:
			rr, err = dns.NewRR(fmt.Sprintf("%s %d IN AAAA %s", q.Name, z.ttl, a))
		}
		if err == nil && rr != nil {
			m.Answer = append(m.Answer, rr)
		}
	}
	w.WriteMsg(m)
}
