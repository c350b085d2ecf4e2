package cwlfake

import (
	"time"
)

// Fault is an injected failure for the next requests.
type Fault int

const (
	// None handles the request normally.
	None Fault = iota
	// ServiceUnavailable answers 500 ServiceUnavailableException.
	ServiceUnavailable
	// Bare503 answers 503 with an HTML body and no error type, as a load
	// balancer in front of the service would.
	Bare503
	// Reset reads the request, stores nothing and resets the connection.
	Reset
	// AcceptThenReset stores the events, then resets the connection
	// instead of answering: the client must retry and so duplicates.
	AcceptThenReset
	// Slow delays the answer by the SetSlow delay (2 s if unset).
	Slow
)

func (f Fault) String() string {
	switch f {
	case None:
		return "none"
	case ServiceUnavailable:
		return "service_unavailable"
	case Bare503:
		return "bare_503"
	case Reset:
		return "reset"
	case AcceptThenReset:
		return "accept_then_reset"
	case Slow:
		return "slow"
	}
	return "unknown"
}

type faultRule struct {
	f Fault
	n int // requests left; < 0 forever
}

// InjectFault applies f to the next n requests of any operation (after
// faults queued earlier); n < 0 applies it until ClearFaults.
func (s *Server) InjectFault(f Fault, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, faultRule{f: f, n: n})
}

// ClearFaults removes queued faults, the slow delay, throttling and poison.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
	s.slow = 0
	s.poison = ""
	s.bucket = tokenBucket{}
}

// Injected returns how many times f was applied.
func (s *Server) Injected(f Fault) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.injected[f]
}

func (s *Server) takeFault() Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.faults) > 0 {
		r := &s.faults[0]
		if r.n == 0 {
			s.faults = s.faults[1:]
			continue
		}
		if r.n > 0 {
			r.n--
		}
		s.injected[r.f]++
		s.log.Debug("cwlfake: injecting fault", "fault", r.f.String())
		return r.f
	}
	return None
}

// SetSlow delays every answer by d (0 turns it off).
func (s *Server) SetSlow(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slow = d
}

func (s *Server) slowFor() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.slow
}

// SetPoison makes any PutLogEvents carrying a message that contains substr
// fail with InvalidParameterException, the way one malformed event fails
// its whole batch ("" turns it off).
func (s *Server) SetPoison(substr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.poison = substr
}

// SetThrottle limits PutLogEvents to rps requests per second (burst of
// one second's worth); the rest get ThrottlingException. 0 turns it off.
func (s *Server) SetThrottle(rps float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bucket = tokenBucket{rate: rps, burst: max(rps, 1), tokens: max(rps, 1), last: time.Now()}
}

// Throttled returns how many PutLogEvents calls were throttled.
func (s *Server) Throttled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bucket.refused
}

type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
	refused             int
}

func (s *Server) allow() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := &s.bucket
	if b.rate <= 0 {
		return true
	}
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		b.refused++
		return false
	}
	b.tokens--
	return true
}
