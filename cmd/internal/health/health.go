// Package health serves the appliance's health verdict over HTTP.
//
// GWLB's target group probes this endpoint: it must say 200 only when the
// whole data path can serve traffic (receive workers alive, steering rules
// in place, proxy listeners accepting, log shipper not failing closed), and
// 503 while draining, so GWLB stops sending new flows before scale-in.
package health

import (
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
)

// Check is one component's contribution to the verdict.
type Check struct {
	Name string
	// Health returns nil when the component is healthy.
	Health func() error
	// Stats, optional, returns a JSON-encodable snapshot of counters.
	Stats func() any
}

// Server aggregates checks. It is an http.Handler.
type Server struct {
	simple   bool
	draining atomic.Bool
	mu       sync.RWMutex
	checks   []Check
}

// New returns a server; mode "simple" answers with an empty body.
func New(mode string, checks ...Check) *Server {
	return &Server{simple: mode == "simple", checks: checks}
}

// Add registers another check (components start one after another).
func (s *Server) Add(c Check) {
	s.mu.Lock()
	s.checks = append(s.checks, c)
	s.mu.Unlock()
}

// SetDraining makes the verdict 503 regardless of the checks, so the load
// balancer stops sending new flows while existing ones finish.
func (s *Server) SetDraining(v bool) { s.draining.Store(v) }

// Report is the JSON body of a full-mode answer.
type Report struct {
	Status string                 `json:"status"` // ok, unhealthy, draining
	Checks map[string]CheckReport `json:"checks"`
}

// CheckReport is one component's part of the report.
type CheckReport struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Stats any    `json:"stats,omitempty"`
}

// Verdict evaluates every check.
func (s *Server) Verdict(withStats bool) (bool, Report) {
	s.mu.RLock()
	checks := s.checks
	s.mu.RUnlock()
	r := Report{Status: "ok", Checks: make(map[string]CheckReport, len(checks))}
	ok := true
	for _, c := range checks {
		var cr CheckReport
		if err := c.Health(); err != nil {
			cr.Error = err.Error()
			ok = false
		} else {
			cr.OK = true
		}
		if withStats && c.Stats != nil {
			cr.Stats = c.Stats()
		}
		r.Checks[c.Name] = cr
	}
	if !ok {
		r.Status = "unhealthy"
	}
	if s.draining.Load() {
		ok = false
		r.Status = "draining"
	}
	return ok, r
}

// ServeHTTP answers any GET or HEAD with the verdict.
func (s *Server) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	ok, rep := s.Verdict(!s.simple)
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
	}
	w.Header().Set("Cache-Control", "no-store")
	if s.simple {
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(code)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if req.Method == http.MethodGet {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	}
}
