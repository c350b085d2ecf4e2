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
	"strings"
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

// The body has bodyLen bytes, or n for a path /bench/<n> with n up to
// maxLen (several body sizes in one run).
func startUpstream(t *topology, caDir, host string, bodyLen, maxLen int) (*upstream, error) {
	auth, err := ca.LoadFiles(filepath.Join(caDir, ca.CertFileName), filepath.Join(caDir, ca.KeyFileName))
	if err != nil {
		return nil, err
	}
	leaf, err := ca.NewMinter(auth, ca.MinterOptions{}, nil).Certificate(context.Background(), host, netip.Addr{})
	if err != nil {
		return nil, fmt.Errorf("upstream certificate: %w", err)
	}
	body := bytes.Repeat([]byte("x"), max(bodyLen, maxLen))
	clen := strconv.Itoa(bodyLen)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h["Content-Type"] = []string{"application/octet-stream"}
			n, cl := bodyLen, clen
			if s, ok := strings.CutPrefix(r.URL.Path, "/bench/"); ok {
				if v, err := strconv.Atoi(s); err == nil && v >= 0 && v <= len(body) {
					n, cl = v, s
				}
			}
			h["Content-Length"] = []string{cl}
			_, _ = w.Write(body[:n])
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
