package proxy

import (
	"fmt"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/mirror"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/ssrf"
)

// Config is the proxy section of the appliance configuration. Listeners and
// ports are not part of it: the lead hands ready net.Listeners to ServeHTTP
// and ServeTLS.
type Config struct {
	Policy policy.Config `yaml:"policy"`
	SSRF   ssrf.Config   `yaml:"ssrf"`
	// Binding ties name-based decisions to the destination address (see
	// binding.go).
	Binding BindingConfig `yaml:"binding"`

	// UpstreamCABundle is a PEM file of extra roots trusted for upstream
	// servers, in addition to the system roots. Empty: system roots only.
	UpstreamCABundle string `yaml:"upstream_ca_bundle"`
	// DenyTLS says how a TLS connection denied on its SNI ends: "page"
	// completes the handshake with a minted leaf and answers every request
	// with a 403 page naming the rule; "close" just closes.
	DenyTLS string `yaml:"deny_tls"`
	// RedactQuery replaces the query string in recorded paths with "?redacted".
	RedactQuery bool `yaml:"redact_query"`
	// HTTP2 offers h2 (before http/1.1) to bumped TLS clients and, on the
	// verified upstream TLS dial, to upstreams (shared pools only: in
	// per-client upstream mode both sides stay HTTP/1.1). WebSocket needs
	// HTTP/1.1 (clients that want it negotiate http/1.1; upgrade requests
	// go upstream over HTTP/1.1).
	HTTP2 bool `yaml:"http2"`
	// HTTP2MaxStreams caps concurrent streams per client HTTP/2 connection.
	HTTP2MaxStreams uint32 `yaml:"http2_max_streams"`

	// ClientHelloTimeout bounds reading the ClientHello (and the first bytes
	// of any connection).
	ClientHelloTimeout time.Duration `yaml:"client_hello_timeout"`
	// HandshakeTimeout bounds the TLS handshake with the client.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// HeaderReadTimeout bounds reading one request's headers.
	HeaderReadTimeout time.Duration `yaml:"header_read_timeout"`
	// MaxHeaderBytes caps one request's header block.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// IdleTimeout closes idle client keep-alive connections (HTTP/1.x:
	// after IdleTimeout plus at most min(IdleTimeout/10, 1s), the slack
	// that spares a busy connection a deadline change per request).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// DialTimeout, UpstreamTLSTimeout and ResponseHeaderTimeout bound the
	// upstream side; a timeout becomes a 504 page.
	DialTimeout           time.Duration `yaml:"dial_timeout"`
	UpstreamTLSTimeout    time.Duration `yaml:"upstream_tls_timeout"`
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout"`
	// UpstreamIdleTimeout closes pooled idle upstream connections.
	UpstreamIdleTimeout time.Duration `yaml:"upstream_idle_timeout"`
	// UpstreamIdlePerDest caps idle upstream connections per pool key
	// (destination ip:port + SNI).
	UpstreamIdlePerDest int `yaml:"upstream_idle_per_dest"`
	// UpstreamPools caps the number of pool keys kept (LRU).
	UpstreamPools int `yaml:"upstream_pools"`
	// VerifiedTTL: after a successful upstream verification for a pool key,
	// new client connections to that key within this time are bumped
	// without a fresh upstream pre-dial (every new upstream connection is
	// still verified before any byte of content flows). 0 = always pre-dial.
	VerifiedTTL time.Duration `yaml:"verified_ttl"`
	// SpliceIdleTimeout closes spliced connections idle in both directions.
	SpliceIdleTimeout time.Duration `yaml:"splice_idle_timeout"`
	// MaxConns caps concurrent client connections (all listeners); excess
	// connections are closed at once and recorded.
	MaxConns int `yaml:"max_conns"`
	// MaxRecordField caps every string field of a record, in bytes.
	MaxRecordField int `yaml:"max_record_field"`

	// Fair share (issue 14). MaxConns 0 sizes the limit from the
	// instance's memory (SizeMaxConns); an explicit limit that cannot fit
	// is refused.
	//
	// ProgressTimeout ends a connection whose client makes no progress:
	// a request body that sends no byte, or a response the client does
	// not read (one write of at most 32 KiB not taken), for this long.
	// It applies to HTTP/1 (whole connection), HTTP/2 (per stream, and
	// per connection for writes) and to the write side of splices (which
	// also stay bounded by splice_idle_timeout). The record names the
	// side that stalled (stalled: client_send, client_read, upstream_read).
	ProgressTimeout time.Duration `yaml:"progress_timeout"`
	// MaxConnsPerClient caps concurrent connections from one client
	// address (all listeners), so one source cannot take every slot. A
	// client is its address within its GWLB endpoint: VPCs overlap.
	// 0: max_conns/8 (at least 1). Excess connections get a 503 page
	// (plain HTTP) or a clean close (TLS), and a rate-limited record.
	MaxConnsPerClient int `yaml:"max_conns_per_client"`
	// Mirror is the decryption mirror (issue 19): the cleartext of bumped
	// HTTP/1.x and plain HTTP connections as synthetic TCP/IP packets into
	// a tap device for an IDS. Off by default. The app opens the device
	// (Deps.Mirror); see package mirror.
	Mirror mirror.Config `yaml:"mirror"`
}

// DefaultConfig returns every default.
func DefaultConfig() Config {
	return Config{
		Policy:                policy.DefaultConfig(),
		SSRF:                  ssrf.DefaultConfig(),
		Binding:               DefaultBindingConfig(),
		DenyTLS:               "page",
		RedactQuery:           true,
		HTTP2:                 true,
		HTTP2MaxStreams:       100,
		ClientHelloTimeout:    10 * time.Second,
		HandshakeTimeout:      10 * time.Second,
		HeaderReadTimeout:     30 * time.Second,
		MaxHeaderBytes:        64 << 10,
		IdleTimeout:           120 * time.Second,
		DialTimeout:           10 * time.Second,
		UpstreamTLSTimeout:    10 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		UpstreamIdleTimeout:   90 * time.Second,
		UpstreamIdlePerDest:   32,
		UpstreamPools:         4096,
		VerifiedTTL:           60 * time.Second,
		SpliceIdleTimeout:     350 * time.Second,
		MaxConns:              0,
		MaxRecordField:        2048,
		ProgressTimeout:       30 * time.Second,
		MaxConnsPerClient:     0,
		Mirror:                mirror.DefaultConfig(),
	}
}

// Validate checks c; messages start with the offending yaml key.
func (c *Config) Validate() error {
	if err := c.Policy.Validate(); err != nil {
		return fmt.Errorf("policy.%w", err)
	}
	if err := c.SSRF.Validate(); err != nil {
		return fmt.Errorf("ssrf.%w", err)
	}
	if err := c.Binding.Validate(); err != nil {
		return fmt.Errorf("binding.%w", err)
	}
	if c.DenyTLS != "page" && c.DenyTLS != "close" {
		return fmt.Errorf("deny_tls: %q is not page or close", c.DenyTLS)
	}
	if c.HTTP2MaxStreams < 1 || c.HTTP2MaxStreams > 1000 {
		return fmt.Errorf("http2_max_streams: %d out of range 1..1000", c.HTTP2MaxStreams)
	}
	durs := []struct {
		key string
		v   time.Duration
	}{
		{"client_hello_timeout", c.ClientHelloTimeout},
		{"handshake_timeout", c.HandshakeTimeout},
		{"header_read_timeout", c.HeaderReadTimeout},
		{"idle_timeout", c.IdleTimeout},
		{"dial_timeout", c.DialTimeout},
		{"upstream_tls_timeout", c.UpstreamTLSTimeout},
		{"response_header_timeout", c.ResponseHeaderTimeout},
		{"upstream_idle_timeout", c.UpstreamIdleTimeout},
		{"splice_idle_timeout", c.SpliceIdleTimeout},
		{"progress_timeout", c.ProgressTimeout},
	}
	for _, d := range durs {
		if d.v < 10*time.Millisecond || d.v > 24*time.Hour {
			return fmt.Errorf("%s: %v out of range 10ms..24h", d.key, d.v)
		}
	}
	if c.VerifiedTTL < 0 || c.VerifiedTTL > time.Hour {
		return fmt.Errorf("verified_ttl: %v out of range 0..1h", c.VerifiedTTL)
	}
	if c.MaxHeaderBytes < 1024 || c.MaxHeaderBytes > 1<<20 {
		return fmt.Errorf("max_header_bytes: %d out of range 1024..1048576", c.MaxHeaderBytes)
	}
	if c.UpstreamIdlePerDest < 0 || c.UpstreamIdlePerDest > 10000 {
		return fmt.Errorf("upstream_idle_per_dest: %d out of range 0..10000", c.UpstreamIdlePerDest)
	}
	if c.UpstreamPools < 1 || c.UpstreamPools > 1<<20 {
		return fmt.Errorf("upstream_pools: %d out of range 1..1048576", c.UpstreamPools)
	}
	if c.MaxConns < 0 || c.MaxConns > 1<<22 {
		return fmt.Errorf("max_conns: %d out of range 0 (auto)..4194304", c.MaxConns)
	}
	if c.MaxConnsPerClient < 0 || c.MaxConns > 0 && c.MaxConnsPerClient > c.MaxConns {
		return fmt.Errorf("max_conns_per_client: %d out of range 0 (auto)..max_conns (%d)", c.MaxConnsPerClient, c.MaxConns)
	}
	if c.MaxRecordField < 64 || c.MaxRecordField > 65536 {
		return fmt.Errorf("max_record_field: %d out of range 64..65536", c.MaxRecordField)
	}
	if err := c.Mirror.Validate(); err != nil {
		return fmt.Errorf("mirror.%w", err)
	}
	return nil
}

// ConnBudget is the memory set aside per client connection when max_conns
// is sized or checked: an idle bumped HTTP/1 connection measured about
// 40 KB of RSS (bench proxy --scenario idle); a busy one holds buffers,
// an upstream connection and TLS records in flight, and per-client
// upstream mode has a second TLS connection per client.
const ConnBudget = 128 << 10

// Automatic max_conns bounds.
const (
	minAutoConns = 256
	maxAutoConns = 100000
)

// SizeMaxConns returns the connection limit for an instance with mem bytes
// of memory: maxConns itself when it fits in three quarters of mem at
// ConnBudget per connection, an error naming max_conns when it does not,
// and for maxConns 0 what half of mem holds (256..100000). mem 0
// (unknown) accepts any explicit limit and gives 20000 for 0.
func SizeMaxConns(maxConns int, mem uint64) (int, error) {
	if mem == 0 {
		if maxConns == 0 {
			return 20000, nil
		}
		return maxConns, nil
	}
	if maxConns == 0 {
		return int(min(max(mem/2/ConnBudget, minAutoConns), maxAutoConns)), nil
	}
	if need := uint64(maxConns) * ConnBudget; need > mem/4*3 {
		return 0, fmt.Errorf("max_conns: %d connections need about %d MiB (%d KiB each), more than 3/4 of this instance's %d MiB; lower it or set 0 to size it from memory (%d here)",
			maxConns, need>>20, ConnBudget>>10, mem>>20, min(max(mem/2/ConnBudget, minAutoConns), maxAutoConns))
	}
	return maxConns, nil
}

// perClientCap is max_conns_per_client resolved against the effective
// max_conns.
func perClientCap(perClient, maxConns int) int {
	if perClient > 0 {
		return min(perClient, maxConns)
	}
	return max(maxConns/8, 1)
}
