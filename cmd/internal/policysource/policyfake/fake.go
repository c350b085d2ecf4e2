// Package policyfake is a local S3 and SSM Parameter Store for tests and
// the demo, speaking the wire protocols the real aws-sdk-go-v2 clients use:
// S3's REST GetObject (path-style GET /bucket/key, ETag and
// x-amz-version-id headers, If-None-Match answered 304, XML errors) and
// SSM's awsJson1.1 GetParameter/PutParameter (POST /, X-Amz-Target
// AmazonSSM.<Operation>, errors as {"__type", "message"}), with the
// parameter size limits of the standard (4 KB) and advanced (8 KB) tiers.
// Down makes either answer 503 (an outage); requests are counted.
package policyfake

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// SSM parameter value limits by tier.
const (
	StandardMaxBytes = 4096
	AdvancedMaxBytes = 8192
)

// Server is both fakes on one handler: S3 on GET/HEAD paths, SSM on POST /.
type Server struct {
	mu      sync.Mutex
	objects map[string]*object // "bucket/key"
	params  map[string]*param
	down    atomic.Bool
	gets    atomic.Int64
	nextVer int
}

type object struct {
	data    []byte
	etag    string
	version string
	mod     time.Time
}

type param struct {
	value   string
	version int64
	tier    string
	mod     time.Time
}

// New returns an empty fake.
func New() *Server {
	return &Server{objects: map[string]*object{}, params: map[string]*param{}}
}

// Down makes every request fail with 503 while on.
func (s *Server) Down(on bool) { s.down.Store(on) }

// Requests counts GetObject and GetParameter calls answered.
func (s *Server) Requests() int64 { return s.gets.Load() }

// PutObject stores an object (as a versioned bucket does: a new version id
// each time) and returns its ETag.
func (s *Server) PutObject(bucket, key string, data []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sum := md5.Sum(data)
	s.nextVer++
	o := &object{data: append([]byte(nil), data...), etag: `"` + hex.EncodeToString(sum[:]) + `"`,
		version: fmt.Sprintf("v%06d", s.nextVer), mod: time.Now().UTC()}
	s.objects[bucket+"/"+key] = o
	return o.etag
}

// PutParameter stores a parameter value as SSM's PutParameter with
// Overwrite does; tier is "Standard" or "Advanced".
func (s *Server) PutParameter(name, value, tier string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.putParam(name, value, tier)
}

func (s *Server) putParam(name, value, tier string) (int64, error) {
	if tier == "" {
		tier = "Standard"
	}
	limit := StandardMaxBytes
	if tier == "Advanced" {
		limit = AdvancedMaxBytes
	}
	if len(value) > limit {
		return 0, fmt.Errorf("%s tier parameters support a maximum parameter value of %d characters", tier, limit)
	}
	p := s.params[name]
	if p == nil {
		p = &param{}
		s.params[name] = p
	}
	p.value, p.tier, p.mod = value, tier, time.Now().UTC()
	p.version++
	return p.version, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.down.Load() {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "service unavailable", http.StatusServiceUnavailable)
		return
	}
	if r.Method == http.MethodPost && r.URL.Path == "/" && strings.HasPrefix(r.Header.Get("X-Amz-Target"), "AmazonSSM.") {
		s.ssm(w, r)
		return
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		s.s3Get(w, r)
		return
	}
	s3Error(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
}

func (s *Server) s3Get(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") == "" {
		s3Error(w, http.StatusForbidden, "AccessDenied", "Anonymous access is denied.")
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/")
	s.mu.Lock()
	o := s.objects[path]
	s.mu.Unlock()
	s.gets.Add(1)
	if o == nil {
		s3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	h := w.Header()
	h.Set("ETag", o.etag)
	h.Set("x-amz-version-id", o.version)
	h.Set("Last-Modified", o.mod.Format(http.TimeFormat))
	if inm := r.Header.Get("If-None-Match"); inm != "" && (inm == o.etag || inm == "*") {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", "application/yaml")
	h.Set("Content-Length", strconv.Itoa(len(o.data)))
	if r.Method == http.MethodHead {
		return
	}
	w.Write(o.data)
}

func s3Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	type e struct {
		XMLName   xml.Name `xml:"Error"`
		Code      string
		Message   string
		RequestId string
	}
	b, _ := xml.Marshal(e{Code: code, Message: msg, RequestId: "policyfake"})
	w.Write(append([]byte(xml.Header), b...))
}

func (s *Server) ssm(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") == "" {
		ssmError(w, http.StatusBadRequest, "UnrecognizedClientException", "The security token included in the request is invalid.")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		ssmError(w, http.StatusBadRequest, "SerializationException", err.Error())
		return
	}
	op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "AmazonSSM.")
	switch op {
	case "GetParameter":
		var in struct {
			Name           string
			WithDecryption bool
		}
		if err := json.Unmarshal(body, &in); err != nil || in.Name == "" {
			ssmError(w, http.StatusBadRequest, "ValidationException", "Name is required")
			return
		}
		s.mu.Lock()
		p := s.params[in.Name]
		var out map[string]any
		if p != nil {
			out = map[string]any{"Parameter": map[string]any{
				"Name": in.Name, "Type": "String", "Value": p.value, "Version": p.version,
				"ARN":              "arn:aws:ssm:us-east-1:123456789012:parameter/" + strings.TrimPrefix(in.Name, "/"),
				"DataType":         "text",
				"LastModifiedDate": float64(p.mod.UnixMilli()) / 1000,
			}}
		}
		s.mu.Unlock()
		s.gets.Add(1)
		if out == nil {
			ssmError(w, http.StatusBadRequest, "ParameterNotFound", "")
			return
		}
		ssmJSON(w, out)
	case "PutParameter":
		var in struct {
			Name, Value, Type, Tier string
			Overwrite               bool
		}
		if err := json.Unmarshal(body, &in); err != nil || in.Name == "" {
			ssmError(w, http.StatusBadRequest, "ValidationException", "Name is required")
			return
		}
		s.mu.Lock()
		_, exists := s.params[in.Name]
		if exists && !in.Overwrite {
			s.mu.Unlock()
			ssmError(w, http.StatusBadRequest, "ParameterAlreadyExists", "The parameter already exists.")
			return
		}
		v, err := s.putParam(in.Name, in.Value, in.Tier)
		s.mu.Unlock()
		if err != nil {
			ssmError(w, http.StatusBadRequest, "ValidationException", err.Error())
			return
		}
		tier := in.Tier
		if tier == "" {
			tier = "Standard"
		}
		ssmJSON(w, map[string]any{"Version": v, "Tier": tier})
	default:
		ssmError(w, http.StatusBadRequest, "InvalidAction", "operation "+op+" is not supported by the fake")
	}
}

func ssmJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(v)
}

func ssmError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"__type": typ, "message": msg})
}
