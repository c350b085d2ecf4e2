//go:build linux

package steer

import (
	"bufio"
	"errors"
	"log/slog"
	"net"
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
