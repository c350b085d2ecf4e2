// Package asfake is a local Auto Scaling endpoint for the one call the
// appliance makes, CompleteLifecycleAction, speaking the real wire
// protocol (AWS query protocol: a SigV4-signed form POST, XML answers and
// XML errors), so tests drive the real SDK client against it.
package asfake

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Call is one accepted CompleteLifecycleAction.
type Call struct {
	Params url.Values // AutoScalingGroupName, LifecycleHookName, InstanceId, ...
	At     time.Time
	// Note is what Server.OnCall returned for the call (tests record the
	// state of the world at that moment in it).
	Note any
}

// Server is the fake. Set OnCall before serving.
type Server struct {
	// OnCall, when set, is called for each accepted call, outside the
	// lock; its result is kept as the call's Note.
	OnCall func(url.Values) any

	mu    sync.Mutex
	calls []Call
}

// Calls returns the accepted calls in order.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	io.WriteString(w, `<ErrorResponse><Error><Type>Sender</Type><Code>`+code+`</Code><Message>`+msg+`</Message></Error><RequestId>asfake</RequestId></ErrorResponse>`)
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		writeError(w, http.StatusBadRequest, "MalformedQueryString", "want a form POST")
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") ||
		!strings.Contains(r.Header.Get("Authorization"), "/autoscaling/aws4_request") {
		writeError(w, http.StatusForbidden, "MissingAuthenticationToken", "request not signed for autoscaling")
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	v, err := url.ParseQuery(string(body))
	if err != nil || v.Get("Action") != "CompleteLifecycleAction" || v.Get("Version") != "2011-01-01" {
		writeError(w, http.StatusBadRequest, "InvalidAction", "only CompleteLifecycleAction (2011-01-01) is served")
		return
	}
	for _, k := range []string{"AutoScalingGroupName", "LifecycleHookName", "LifecycleActionResult"} {
		if v.Get(k) == "" {
			writeError(w, http.StatusBadRequest, "ValidationError", k+" is required")
			return
		}
	}
	c := Call{Params: v, At: time.Now()}
	if s.OnCall != nil {
		c.Note = s.OnCall(v)
	}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/xml")
	io.WriteString(w, `<CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><CompleteLifecycleActionResult/><ResponseMetadata><RequestId>asfake-1</RequestId></ResponseMetadata></CompleteLifecycleActionResponse>`)
}
