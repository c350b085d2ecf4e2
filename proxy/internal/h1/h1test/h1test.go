// Package h1test holds the raw HTTP/1.1 client steps that the engine's
// tests (proxy/internal/h1) and the proxy's own HTTP/1 tests (proxy) both
// drive: open a plain connection, read one response, check the server
// closed the connection. Tests only; kept in one place so the two suites
// judge responses and closes the same way.
package h1test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Dial opens a plain TCP connection to addr with a 20 s deadline, closed
// at the test's cleanup.
func Dial(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// ReadResp reads one response (for a request with method) and its body.
func ReadResp(t testing.TB, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return resp, string(b)
}

// WantClosed checks that the server ends the connection with no more
// bytes (a FIN or a reset).
func WantClosed(t testing.TB, br *bufio.Reader) {
	t.Helper()
	b, err := io.ReadAll(br)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("want the connection closed, got %v", err)
	}
	if len(b) > 0 {
		t.Fatalf("want the connection closed, got %q", b)
	}
}
