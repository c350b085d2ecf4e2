package proxybench

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"github.com/gwlbproxy/gwlbproxy/ca"
)

// upstream is the origin server: HTTPS (HTTP/1.1) on upstreamAddr:443 in
// the upstream namespace, answering every request with the same body. Its
// certificate comes from its own CA, which both proxies are told to trust.
type upstream struct {
	srv *http.Server
	l   net.Listener
}

func startUpstream(t *topology, caDir, host string, bodyLen int) (*upstream, error) {
	auth, err := ca.LoadFiles(filepath.Join(caDir, ca.CertFileName), filepath.Join(caDir, ca.KeyFileName))
	if err != nil {
		return nil, err
	}
	leaf, err := ca.NewMinter(auth, ca.MinterOptions{}, nil).Certificate(context.Background(), host, netip.Addr{})
	if err != nil {
		return nil, fmt.Errorf("upstream certificate: %w", err)
	}
	body := bytes.Repeat([]byte("x"), bodyLen)
	clen := strconv.Itoa(bodyLen)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h["Content-Type"] = []string{"application/octet-stream"}
			h["Content-Length"] = []string{clen}
			_, _ = w.Write(body)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}},
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // no h2
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
	}
	l, err := t.upstream.listenTCP(netip.AddrPortFrom(upstreamAddr, 443).String())
	if err != nil {
		return nil, err
	}
	u := &upstream{srv: srv, l: l}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	return u, nil
}

func (u *upstream) close() error { return u.srv.Close() }
