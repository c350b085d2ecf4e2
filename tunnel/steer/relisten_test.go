//go:build linux

package steer

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// TestListenerReopened: a listener shut down from outside (its accept
// fails for good with EINVAL) is re-opened on the same address once
// opening succeeds again; Health names it while it is down; the serve
// loop never sees the failure; the re-open is counted; Close ends Accept
// with net.ErrClosed.
func TestListenerReopened(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	var allow atomic.Bool
	var attempts atomic.Int64
	open := func(a string) (net.Listener, error) {
		if a != addr {
			t.Errorf("re-open of %q, want %q", a, addr)
		}
		attempts.Add(1)
		if !allow.Load() {
			return nil, errors.New("injected: address busy")
		}
		return net.Listen("tcp4", a)
	}
	reg := prometheus.NewRegistry()
	pl, err := newListeners([]net.Listener{l}, nil, open, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	serveErr := make(chan error, 1)
	go func() {
		for {
			c, err := pl.HTTP[0].Accept()
			if err != nil {
				serveErr <- err
				return
			}
			c.Write([]byte("ok\n"))
			c.Close()
		}
	}()
	get := func() error {
		c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && line != "ok\n" {
			err = errors.New("bad answer " + line)
		}
		return err
	}
	if err := get(); err != nil {
		t.Fatalf("before: %v", err)
	}
	if err := pl.Health(); err != nil {
		t.Fatalf("Health before: %v", err)
	}

	// Break it from outside, as the e2e test does with pidfd_getfd.
	rc, err := l.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_RD) })
	if serr != nil {
		t.Fatal(serr)
	}
	get() // wakes a blocked accept if the shutdown did not
	waitFor(t, "Health red", func() bool { return pl.Health() != nil })
	t.Logf("down: %v", pl.Health())
	waitFor(t, "re-open retried", func() bool { return attempts.Load() >= 3 })
	if err := pl.Health(); err == nil {
		t.Fatal("Health green while re-opening fails")
	}
	allow.Store(true)
	waitFor(t, "Health green", func() bool { return pl.Health() == nil })
	if err := get(); err != nil {
		t.Fatalf("after re-open: %v", err)
	}
	if n := pl.Reopens(); n != 1 {
		t.Fatalf("reopens %d, want 1", n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "gwlbproxy_proxy_listener_reopens_total" || mfs[0].Metric[0].GetCounter().GetValue() != 1 {
		t.Fatalf("metrics %v", mfs)
	}
	select {
	case err := <-serveErr:
		t.Fatalf("serve loop saw %v", err)
	default:
	}
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-serveErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

// TestListenerCloseWhileReopening: Close ends a re-open loop that never
// succeeds.
func TestListenerCloseWhileReopening(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int64
	pl, err := newListeners(nil, []net.Listener{l}, func(string) (net.Listener, error) {
		attempts.Add(1)
		return nil, errors.New("injected")
	}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := pl.TLS[0].Accept()
		done <- err
	}()
	l.Close() // the underlying socket fails: Accept starts re-opening
	waitFor(t, "re-open attempted", func() bool { return attempts.Load() >= 1 })
	pl.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
	if err := pl.Health(); err != nil {
		t.Fatalf("Health after Close: %v", err)
	}
}

// TestListenAllReopensTransparent is the re-open as the appliance does it:
// the Steerer's own listeners in its namespace, one broken from outside,
// re-opened through ListenTransparent (transparent, mark_base) on the
// same address, counted in the metric registered with the Steerer's
// registry.
func TestListenAllReopensTransparent(t *testing.T) {
	needRoot(t)
	n := newNS(t, "rl")
	n.up(t, "lo")
	cfg := natConfig()
	reg := prometheus.NewRegistry()
	s, err := newSteerer(cfg, testLogger(t), reg, int(n.h))
	if err != nil {
		t.Fatal(err)
	}
	ls, err := s.ListenAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	if len(ls.HTTP) == 0 || len(ls.TLS) != len(ls.HTTP) || ls.TLS[0].Addr().String() != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), cfg.TLSListenPort).String() {
		t.Fatalf("listeners: %d http, %d tls", len(ls.HTTP), len(ls.TLS))
	}
	for _, l := range append(append([]net.Listener{}, ls.HTTP...), ls.TLS...) {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("ok\n"))
				c.Close()
			}
		}()
	}
	dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), cfg.TLSListenPort)
	get := func() error {
		c, err := dial(t, n, dst, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && line != "ok\n" {
			err = errors.New("bad answer " + line)
		}
		return err
	}
	if err := get(); err != nil {
		t.Fatalf("before: %v", err)
	}
	r := ls.TLS[0].(*reopener)
	sockopts := func() (transparent, mark int) {
		r.mu.Lock()
		l := r.cur
		r.mu.Unlock()
		rc, err := l.(*net.TCPListener).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		rc.Control(func(fd uintptr) {
			transparent, _ = unix.GetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT)
			mark, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK)
		})
		return
	}
	r.mu.Lock()
	old := r.cur
	r.mu.Unlock()
	rc, err := old.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = unix.Shutdown(int(fd), unix.SHUT_RD) })
	if err != nil {
		t.Fatal(err)
	}
	get() // makes the blocked accept fail
	waitFor(t, "re-opened", func() bool { return ls.Reopens() == 1 && ls.Health() == nil })
	r.mu.Lock()
	same := r.cur == old
	r.mu.Unlock()
	if same {
		t.Fatal("still the broken socket")
	}
	if tr, mark := sockopts(); tr != 1 || uint32(mark) != cfg.MarkBase {
		t.Fatalf("re-opened socket: IP_TRANSPARENT %d, SO_MARK %#x, want 1 and %#x", tr, mark, cfg.MarkBase)
	}
	if err := get(); err != nil {
		t.Fatalf("after re-open: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "gwlbproxy_proxy_listener_reopens_total" {
			found = mf.Metric[0].GetCounter().GetValue() == 1
		}
	}
	if !found {
		t.Fatal("gwlbproxy_proxy_listener_reopens_total is not 1 in the Steerer's registry")
	}
	if err := ls.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, n, dst, 2*time.Second); err == nil {
		t.Fatal("still listening after Close")
	}
}

// flakyListener fails Accept with errs, one per call, then accepts from l.
type flakyListener struct {
	net.Listener
	errs chan error
}

func (f *flakyListener) Accept() (net.Conn, error) {
	select {
	case err := <-f.errs:
		return nil, err
	default:
		return f.Listener.Accept()
	}
}

// temporaryErr is what accept returns when it is out of file
// descriptors: net.Error-like, Temporary.
type temporaryErr struct{}

func (temporaryErr) Error() string   { return "accept: too many open files" }
func (temporaryErr) Temporary() bool { return true }
func (temporaryErr) Timeout() bool   { return false }

// TestListenerTemporaryErrorPassedThrough: a temporary accept error (out
// of descriptors, a timeout) goes to the serve loop, which backs off
// itself; the socket is kept, not re-opened, and Health stays green.
func TestListenerTemporaryErrorPassedThrough(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyListener{Listener: l, errs: make(chan error, 2)}
	f.errs <- temporaryErr{}
	f.errs <- &net.OpError{Op: "accept", Net: "tcp", Err: os.ErrDeadlineExceeded}
	var attempts atomic.Int64
	pl, err := newListeners([]net.Listener{f}, nil, func(string) (net.Listener, error) {
		attempts.Add(1)
		return nil, errors.New("injected")
	}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	accept := func() (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			c, err := pl.HTTP[0].Accept()
			ch <- result{c, err}
		}()
		select {
		case r := <-ch:
			return r.c, r.err
		case <-time.After(10 * time.Second):
			t.Fatalf("Accept did not return: the temporary error was taken for a failed socket (%d re-open attempts)", attempts.Load())
			return nil, nil
		}
	}
	for i, want := range []string{"too many open files", "i/o timeout"} {
		_, err := accept()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Accept %d: %v, want the %q error", i, err, want)
		}
		if err := pl.Health(); err != nil {
			t.Fatalf("Health after a temporary error: %v", err)
		}
	}
	go func() {
		if c, err := net.Dial("tcp4", l.Addr().String()); err == nil {
			c.Close()
		}
	}()
	c, err := accept()
	if err != nil {
		t.Fatalf("Accept after the temporary errors: %v", err)
	}
	c.Close()
	if attempts.Load() != 0 || pl.Reopens() != 0 {
		t.Fatalf("re-opened on a temporary error: %d attempts, %d reopens", attempts.Load(), pl.Reopens())
	}
}
