// Package cfnfake is a local CloudFormation SignalResource endpoint
// speaking the real wire protocol (AWS query protocol with SigV4-signed
// form posts and XML answers), so tests drive the real SDK against it.
// The instance metadata fake is cmd/internal/awsenv/imdsfake.
package cfnfake

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

const xmlns = "http://cloudformation.amazonaws.com/doc/2010-05-15/"

// Signal is one accepted SignalResource call.
type Signal struct {
	StackName, LogicalResourceID, UniqueID, Status string
}

// CloudFormation answers SignalResource. Fail holds error codes to answer
// with, one per call, before succeeding (e.g. "Throttling", "InternalFailure",
// "ValidationError"); Waiting is the set of "stack/resource" pairs that
// accept signals (others get ValidationError, as a resource not in
// CREATE_IN_PROGRESS/UPDATE_IN_PROGRESS does).
type CloudFormation struct {
	mu      sync.Mutex
	Fail    []string
	Waiting map[string]bool
	signals []Signal
	calls   int
}

// Signals returns the accepted signals.
func (f *CloudFormation) Signals() []Signal {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Signal(nil), f.signals...)
}

// Calls returns how many requests reached the fake.
func (f *CloudFormation) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func writeError(w http.ResponseWriter, status int, typ, code, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<ErrorResponse xmlns=%q><Error><Type>%s</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>fake-req</RequestId></ErrorResponse>`,
		xmlns, typ, code, msg)
}

func (f *CloudFormation) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		writeError(w, 400, "Sender", "MalformedQueryString", "want a form POST")
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") ||
		!strings.Contains(r.Header.Get("Authorization"), "/cloudformation/aws4_request") {
		writeError(w, 403, "Sender", "MissingAuthenticationToken", "request not signed for cloudformation")
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	v, err := url.ParseQuery(string(body))
	if err != nil || v.Get("Action") != "SignalResource" || v.Get("Version") != "2010-05-15" {
		writeError(w, 400, "Sender", "InvalidAction", "only SignalResource (2010-05-15) is served")
		return
	}
	for _, k := range []string{"StackName", "LogicalResourceId", "UniqueId", "Status"} {
		if v.Get(k) == "" {
			writeError(w, 400, "Sender", "ValidationError", k+" is required")
			return
		}
	}
	if s := v.Get("Status"); s != "SUCCESS" && s != "FAILURE" {
		writeError(w, 400, "Sender", "ValidationError", "Status must be SUCCESS or FAILURE")
		return
	}
	if len(f.Fail) > 0 {
		code := f.Fail[0]
		f.Fail = f.Fail[1:]
		status, typ := 400, "Sender"
		if code == "InternalFailure" || code == "ServiceUnavailable" {
			status, typ = 500, "Receiver"
		}
		writeError(w, status, typ, code, "injected "+code)
		return
	}
	key := v.Get("StackName") + "/" + v.Get("LogicalResourceId")
	if !f.Waiting[key] {
		writeError(w, 400, "Sender", "ValidationError", "Resource "+v.Get("LogicalResourceId")+" is in CREATE_COMPLETE state and cannot be signaled")
		return
	}
	f.signals = append(f.signals, Signal{v.Get("StackName"), v.Get("LogicalResourceId"), v.Get("UniqueId"), v.Get("Status")})
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<SignalResourceResponse xmlns=%q><ResponseMetadata><RequestId>fake-req</RequestId></ResponseMetadata></SignalResourceResponse>`, xmlns)
}
