package health

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

func TestVerdict(t *testing.T) {
	var broken atomic.Bool
	s := New("full",
		Check{Name: "tunnel", Health: func() error { return nil }, Stats: func() any { return map[string]int{"rx": 7} }},
		Check{Name: "logship", Health: func() error {
			if broken.Load() {
				return errors.New("spool full")
			}
			return nil
		}},
	)
	get := func() (int, Report) {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		var r Report
		if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
			t.Fatalf("body %q: %v", rec.Body.String(), err)
		}
		return rec.Code, r
	}
	if code, r := get(); code != 200 || r.Status != "ok" || !r.Checks["tunnel"].OK {
		t.Fatalf("healthy: got %d %+v", code, r)
	}
	broken.Store(true)
	code, r := get()
	if code != 503 || r.Status != "unhealthy" || r.Checks["logship"].Error != "spool full" || !r.Checks["tunnel"].OK {
		t.Fatalf("broken: got %d %+v", code, r)
	}
	broken.Store(false)
	s.SetDraining(true)
	if code, r := get(); code != 503 || r.Status != "draining" {
		t.Fatalf("draining: got %d %+v", code, r)
	}
}

func TestSimpleMode(t *testing.T) {
	s := New("simple", Check{Name: "x", Health: func() error { return errors.New("down") }})
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusServiceUnavailable || rec.Body.Len() != 0 {
		t.Fatalf("got %d %q", rec.Code, rec.Body.String())
	}
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("POST", "/", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST: got %d", rec.Code)
	}
}
