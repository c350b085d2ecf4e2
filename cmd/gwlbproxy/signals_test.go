package main

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestDaemonSignals sends this very process the signals that would end it
// by default: with daemonSignals in place SIGHUP becomes a reload request
// and SIGUSR1, SIGUSR2 and SIGPIPE are ignored (the test would die
// otherwise).
func TestDaemonSignals(t *testing.T) {
	var logs syncBuf
	reload := daemonSignals(slog.New(slog.NewTextHandler(&logs, nil)))
	self := syscall.Getpid()
	for _, s := range []syscall.Signal{syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE} {
		if err := syscall.Kill(self, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Kill(self, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reload:
	case <-time.After(5 * time.Second):
		t.Fatal("SIGHUP did not request a reload")
	}
	// Several SIGHUPs while a reload is pending collapse into one.
	syscall.Kill(self, syscall.SIGHUP)
	syscall.Kill(self, syscall.SIGHUP)
	time.Sleep(200 * time.Millisecond)
	n := 0
	for done := false; !done; {
		select {
		case <-reload:
			n++
		default:
			done = true
		}
	}
	if n != 1 {
		t.Fatalf("%d reloads pending after two SIGHUPs, want 1", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !(strings.Contains(logs.String(), "signal=\"user defined signal 1\"") && strings.Contains(logs.String(), "user defined signal 2")) {
		if time.Now().After(deadline) {
			t.Fatalf("ignored signals not logged: %q", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Contains(logs.String(), "broken pipe") {
		t.Fatalf("SIGPIPE logged: %q", logs.String())
	}
}
