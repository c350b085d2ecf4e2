// Package cwlfake is a local CloudWatch Logs endpoint for tests and the
// demo: it speaks the awsJson1.1 wire protocol the real aws-sdk-go-v2
// client uses (POST /, X-Amz-Target Logs_20140328.<Operation>, lowerCamel
// JSON, errors as {"__type", "message"} with the service's HTTP status),
// enforces every PutLogEvents limit the service enforces, and injects the
// faults that make shippers lose or duplicate data: throttling, 500s, bare
// 503s, connection resets, slow answers, accept-then-reset and streams
// deleted under the writer.
//
// Tests read back what was stored with Events. The zero configuration is
// strict: groups and streams must be created before use.
package cwlfake

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// Service limits enforced on PutLogEvents.
const (
	EventOverhead  = 26
	MaxBatchBytes  = 1_048_576
	MaxBatchEvents = 10_000
	MaxEventBytes  = 1_048_576 - EventOverhead
	MaxSpan        = 24 * time.Hour
	MaxFuture      = 2 * time.Hour
	MaxAge         = 14 * 24 * time.Hour
	// maxBody bounds a request body; JSON escaping can double a batch.
	maxBody = 8 << 20
)

const targetPrefix = "Logs_20140328."

// Options configure a Server.
type Options struct {
	// Now is the service clock for too-new/too-old checks (default time.Now).
	Now func() time.Time
	// CountOnly keeps event counts but not messages (benchmarks).
	CountOnly bool
	// Log receives one line per fault injected and per error answered.
	Log *slog.Logger
}

// Event is one stored log event.
type Event struct {
	Timestamp     int64  // from the client, Unix ms
	IngestionTime int64  // service clock at acceptance, Unix ms
	Message       string // empty with CountOnly
}

type stream struct {
	events []Event
	count  int
}

type group struct {
	retentionDays int
	streams       map[string]*stream
}

// Server is the fake service; it is an http.Handler.
type Server struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	groups   map[string]*group
	faults   []faultRule
	slow     time.Duration
	poison   string
	bucket   tokenBucket
	calls    map[string]int
	injected map[Fault]int
	maxPut   int // most events in one accepted PutLogEvents

	seq atomic.Uint64
	srv *http.Server
	ln  net.Listener
}

// New returns a fake with no groups.
func New(opts Options) *Server {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		opts:     opts,
		log:      log,
		groups:   make(map[string]*group),
		calls:    make(map[string]int),
		injected: make(map[Fault]int),
	}
}

// Start serves on addr (e.g. "127.0.0.1:0") and returns the endpoint URL
// to use as the SDK's BaseEndpoint.
func (s *Server) Start(addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("cwlfake: listen %s: %w", addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln)
	return "http://" + ln.Addr().String(), nil
}

// Close stops a server started with Start.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

// apiError is an error answer in the service's format.
type apiError struct {
	status int
	typ    string
	msg    string
}

func (e *apiError) Error() string { return e.typ + ": " + e.msg }

func errInvalid(format string, a ...any) *apiError {
	return &apiError{400, "InvalidParameterException", fmt.Sprintf(format, a...)}
}

func errNotFound(msg string) *apiError { return &apiError{400, "ResourceNotFoundException", msg} }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	op, ok := strings.CutPrefix(target, targetPrefix)
	switch {
	case r.Method != http.MethodPost || r.URL.Path != "/":
		s.reply(w, "", nil, &apiError{404, "UnknownOperationException", "POST / only"})
		return
	case !ok:
		s.reply(w, op, nil, &apiError{400, "UnknownOperationException", "missing or foreign X-Amz-Target " + strconv.Quote(target)})
		return
	case !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-amz-json-1.1"):
		s.reply(w, op, nil, &apiError{400, "SerializationException", "Content-Type must be application/x-amz-json-1.1"})
		return
	case !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 "):
		s.reply(w, op, nil, &apiError{400, "MissingAuthenticationTokenException", "Missing Authentication Token"})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		s.reply(w, op, nil, &apiError{413, "SerializationException", "request body too large or unreadable"})
		return
	}
	s.mu.Lock()
	s.calls[op]++
	s.mu.Unlock()

	fault := s.takeFault()
	if fault == Slow || s.slowFor() > 0 {
		d := s.slowFor()
		if d == 0 {
			d = 2 * time.Second
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	switch fault {
	case ServiceUnavailable:
		s.reply(w, op, nil, &apiError{500, "ServiceUnavailableException", "The server failed to process the request"})
		return
	case Bare503:
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "<html><body>503 Service Unavailable</body></html>")
		return
	case Reset:
		reset(w)
		return
	}
	if op == "PutLogEvents" && !s.allow() {
		s.reply(w, op, nil, &apiError{400, "ThrottlingException", "Rate exceeded"})
		return
	}

	var out any
	var aerr *apiError
	switch op {
	case "CreateLogGroup":
		aerr = s.createLogGroup(body)
	case "CreateLogStream":
		aerr = s.createLogStream(body)
	case "PutRetentionPolicy":
		aerr = s.putRetentionPolicy(body)
	case "PutLogEvents":
		out, aerr = s.putLogEvents(body)
	default:
		aerr = &apiError{400, "UnknownOperationException", "operation " + op + " is not supported by cwlfake"}
	}
	if fault == AcceptThenReset && aerr == nil {
		reset(w)
		return
	}
	s.reply(w, op, out, aerr)
}

func (s *Server) reply(w http.ResponseWriter, op string, out any, aerr *apiError) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Requestid", fmt.Sprintf("cwlfake-%08d", s.seq.Add(1)))
	if aerr != nil {
		s.log.Debug("cwlfake: error answer", "op", op, "type", aerr.typ, "msg", aerr.msg)
		w.WriteHeader(aerr.status)
		json.NewEncoder(w).Encode(map[string]string{"__type": aerr.typ, "message": aerr.msg})
		return
	}
	if out == nil {
		out = struct{}{}
	}
	json.NewEncoder(w).Encode(out)
}

// reset aborts the connection with a TCP RST and no HTTP answer.
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	c, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

var (
	groupNameRE  = regexp.MustCompile(`^[.\-_/#A-Za-z0-9]{1,512}$`)
	streamNameRE = regexp.MustCompile(`^[^:*]{1,512}$`)
)

func (s *Server) createLogGroup(body []byte) *apiError {
	var in struct {
		LogGroupName string `json:"logGroupName"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return &apiError{400, "SerializationException", err.Error()}
	}
	if !groupNameRE.MatchString(in.LogGroupName) {
		return errInvalid("invalid log group name %q", in.LogGroupName)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.groups[in.LogGroupName]; ok {
		return &apiError{400, "ResourceAlreadyExistsException", "The specified log group already exists"}
	}
	s.groups[in.LogGroupName] = &group{streams: make(map[string]*stream)}
	return nil
}

func (s *Server) createLogStream(body []byte) *apiError {
	var in struct {
		LogGroupName  string `json:"logGroupName"`
		LogStreamName string `json:"logStreamName"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return &apiError{400, "SerializationException", err.Error()}
	}
	if !streamNameRE.MatchString(in.LogStreamName) {
		return errInvalid("invalid log stream name %q", in.LogStreamName)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[in.LogGroupName]
	if !ok {
		return errNotFound("The specified log group does not exist.")
	}
	if _, ok := g.streams[in.LogStreamName]; ok {
		return &apiError{400, "ResourceAlreadyExistsException", "The specified log stream already exists"}
	}
	g.streams[in.LogStreamName] = &stream{}
	return nil
}

var retentionDays = map[int]bool{1: true, 3: true, 5: true, 7: true, 14: true, 30: true, 60: true,
	90: true, 120: true, 150: true, 180: true, 365: true, 400: true, 545: true, 731: true, 1096: true,
	1827: true, 2192: true, 2557: true, 2922: true, 3288: true, 3653: true}

func (s *Server) putRetentionPolicy(body []byte) *apiError {
	var in struct {
		LogGroupName    string `json:"logGroupName"`
		RetentionInDays int    `json:"retentionInDays"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return &apiError{400, "SerializationException", err.Error()}
	}
	if !retentionDays[in.RetentionInDays] {
		return errInvalid("retentionInDays %d is not an allowed value", in.RetentionInDays)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[in.LogGroupName]
	if !ok {
		return errNotFound("The specified log group does not exist.")
	}
	g.retentionDays = in.RetentionInDays
	return nil
}

type putIn struct {
	LogGroupName  string `json:"logGroupName"`
	LogStreamName string `json:"logStreamName"`
	LogEvents     []struct {
		Timestamp *int64  `json:"timestamp"`
		Message   *string `json:"message"`
	} `json:"logEvents"`
}

type rejected struct {
	TooNewLogEventStartIndex *int `json:"tooNewLogEventStartIndex,omitempty"`
	TooOldLogEventEndIndex   *int `json:"tooOldLogEventEndIndex,omitempty"`
	ExpiredLogEventEndIndex  *int `json:"expiredLogEventEndIndex,omitempty"`
}

type putOut struct {
	NextSequenceToken     string    `json:"nextSequenceToken"`
	RejectedLogEventsInfo *rejected `json:"rejectedLogEventsInfo,omitempty"`
}

func (s *Server) putLogEvents(body []byte) (any, *apiError) {
	var in putIn
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, &apiError{400, "SerializationException", err.Error()}
	}
	n := len(in.LogEvents)
	if n == 0 {
		return nil, errInvalid("1 validation error detected: Value at 'logEvents' failed to satisfy constraint: Member must have length greater than or equal to 1")
	}
	if n > MaxBatchEvents {
		return nil, errInvalid("log event count %d exceeds %d", n, MaxBatchEvents)
	}
	size := 0
	s.mu.Lock()
	poison := s.poison
	s.mu.Unlock()
	for i, e := range in.LogEvents {
		if e.Timestamp == nil || e.Message == nil {
			return nil, errInvalid("1 validation error detected: Value null at 'logEvents.%d.member' failed to satisfy constraint: Member must not be null", i+1)
		}
		m := len(*e.Message)
		if m == 0 {
			return nil, errInvalid("Log event message cannot be empty (event %d)", i)
		}
		if m+EventOverhead > MaxBatchBytes || m > MaxEventBytes {
			return nil, errInvalid("Log event too large: %d bytes (event %d)", m, i)
		}
		if poison != "" && strings.Contains(*e.Message, poison) {
			return nil, errInvalid("Log event %d is malformed", i)
		}
		if i > 0 && *e.Timestamp < *in.LogEvents[i-1].Timestamp {
			return nil, errInvalid("Log events in a single PutLogEvents request must be in chronological order.")
		}
		size += m + EventOverhead
	}
	if size > MaxBatchBytes {
		return nil, errInvalid("Upload too large: %d bytes exceeds limit of %d", size, MaxBatchBytes)
	}
	first, last := *in.LogEvents[0].Timestamp, *in.LogEvents[n-1].Timestamp
	if time.Duration(last-first)*time.Millisecond > MaxSpan {
		return nil, errInvalid("The batch of log events in a single PutLogEvents request cannot span more than 24 hours.")
	}

	now := s.opts.Now()
	nowMS := now.UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[in.LogGroupName]
	if !ok {
		return nil, errNotFound("The specified log group does not exist.")
	}
	st, ok := g.streams[in.LogStreamName]
	if !ok {
		return nil, errNotFound("The specified log stream does not exist.")
	}
	tooNewFrom := nowMS + MaxFuture.Milliseconds()
	tooOldBefore := nowMS - MaxAge.Milliseconds()
	expiredBefore := int64(-1 << 63)
	if g.retentionDays > 0 {
		expiredBefore = nowMS - int64(g.retentionDays)*24*time.Hour.Milliseconds()
	}
	var rej rejected
	for i, e := range in.LogEvents {
		ts := *e.Timestamp
		switch {
		case ts > tooNewFrom:
			if rej.TooNewLogEventStartIndex == nil {
				rej.TooNewLogEventStartIndex = ptr(i)
			}
			continue
		case ts < tooOldBefore:
			rej.TooOldLogEventEndIndex = ptr(i + 1)
			continue
		case ts < expiredBefore:
			rej.ExpiredLogEventEndIndex = ptr(i + 1)
			continue
		}
		st.count++
		if !s.opts.CountOnly {
			st.events = append(st.events, Event{Timestamp: ts, IngestionTime: nowMS, Message: *e.Message})
		}
	}
	s.maxPut = max(s.maxPut, n)
	out := putOut{NextSequenceToken: strconv.FormatUint(s.seq.Add(1), 10)}
	if rej != (rejected{}) {
		out.RejectedLogEventsInfo = &rej
	}
	return out, nil
}

func ptr[T any](v T) *T { return &v }

// LargestPut is the most events one accepted PutLogEvents call carried
// (tests bound "at most the batches in flight" with it).
func (s *Server) LargestPut() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxPut
}

// CreateLogGroup creates a group directly (not over the wire).
func (s *Server) CreateLogGroup(name string, retentionDays int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.groups[name]; !ok {
		s.groups[name] = &group{streams: make(map[string]*stream)}
	}
	s.groups[name].retentionDays = retentionDays
}

// DeleteLogStream removes a stream and its events, as an operator (or a
// retention clean-up of an idle stream) might while the shipper runs.
func (s *Server) DeleteLogStream(groupName, streamName string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[groupName]
	if !ok {
		return errors.New("cwlfake: no such group")
	}
	delete(g.streams, streamName)
	return nil
}

// DeleteLogGroup removes a group with its streams.
func (s *Server) DeleteLogGroup(groupName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.groups, groupName)
}

// Events returns a copy of the stream's stored events in arrival order.
func (s *Server) Events(groupName, streamName string) []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.groups[groupName]; ok {
		if st, ok := g.streams[streamName]; ok {
			return append([]Event(nil), st.events...)
		}
	}
	return nil
}

// Count returns how many events the stream accepted (also with CountOnly).
func (s *Server) Count(groupName, streamName string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.groups[groupName]; ok {
		if st, ok := g.streams[streamName]; ok {
			return st.count
		}
	}
	return 0
}

// Streams lists a group's stream names, sorted.
func (s *Server) Streams(groupName string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	if g, ok := s.groups[groupName]; ok {
		for n := range g.streams {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Retention returns a group's retention in days (0 = never expire).
func (s *Server) Retention(groupName string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.groups[groupName]; ok {
		return g.retentionDays
	}
	return 0
}

// Calls returns how many requests named op were received (faults included).
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// AWSConfig is the SDK configuration a client of the fake at endpoint
// uses: the region, static test keys (requests are SigV4-signed as for the
// real service) and the endpoint as BaseEndpoint. The appliance builds
// its own from the `aws:` section (cmd/internal/awsenv); tests of
// packages below cmd/ use this one.
func AWSConfig(endpoint, region string) aws.Config {
	return aws.Config{
		Region:       region,
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDCWLFAKE", "cwlfake-secret", ""),
		BaseEndpoint: aws.String(endpoint),
	}
}
