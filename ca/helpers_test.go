package ca

import (
	"crypto/x509"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// newFileCA creates a root with Init in a temp dir and loads it.
func newFileCA(t testing.TB, opts InitOptions) (Authority, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir, opts); err != nil {
		t.Fatalf("Init: %v", err)
	}
	a, err := LoadFiles(filepath.Join(dir, CertFileName), filepath.Join(dir, KeyFileName))
	if err != nil {
		t.Fatalf("LoadFiles: %v", err)
	}
	return a, dir
}

func rootPool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// verifyLeaf runs the client's view of a chain: leaf plus the intermediates
// the server would send, against roots, for name (DNS or IP string).
func verifyLeaf(leafDER []byte, chain [][]byte, roots *x509.CertPool, name string, at time.Time) error {
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, d := range chain {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return err
		}
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		DNSName:       name,
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

// fakeClock is a settable clock for renewal tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// metric returns the value of the counter or gauge name (with the given
// label pairs) gathered from reg.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s %v not found", name, labels)
	return 0
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == k && lp.GetValue() == v {
			return true
		}
	}
	return false
}
