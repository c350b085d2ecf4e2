// Package imdsfake is a local EC2 instance metadata service speaking
// IMDSv2's wire protocol (PUT /latest/api/token with a TTL header, then
// GETs carrying X-aws-ec2-metadata-token), so tests drive the real SDK's
// imds client against it. It serves the paths the appliance reads: the
// instance id, region, lifecycle state, instance tags, the identity
// document and the instance role's credentials, and counts token
// requests and reads per path.
package imdsfake

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Token is the session token the fake hands out and requires.
const Token = "imdsfake-token"

// Server is the fake. Set the fields before serving; use SetState and
// SetTag while serving.
type Server struct {
	InstanceID string
	Region     string
	// V1Only refuses token requests (403), as an IMDSv1-only service
	// would: an IMDSv2-only client must fail.
	V1Only bool
	// Role, when set, is the instance profile's role: its temporary
	// credentials (AccessKeyID, a secret and a session token, valid for an
	// hour) are served under iam/security-credentials/, as EC2 does.
	Role        string
	AccessKeyID string

	mu     sync.Mutex
	state  string            // autoscaling/target-lifecycle-state
	tags   map[string]string // tags/instance/<key>
	tokens int
	reads  map[string]int
}

// SetState sets the target lifecycle state ("InService", "Terminated").
func (s *Server) SetState(state string) {
	s.mu.Lock()
	s.state = state
	s.mu.Unlock()
}

// SetTag sets an instance tag served under tags/instance/.
func (s *Server) SetTag(key, value string) {
	s.mu.Lock()
	if s.tags == nil {
		s.tags = map[string]string{}
	}
	s.tags[key] = value
	s.mu.Unlock()
}

// Tokens returns how many session tokens were issued.
func (s *Server) Tokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens
}

// Reads returns how many authorized GETs of path (relative to /latest/,
// e.g. "meta-data/instance-id") were answered or refused as not found.
func (s *Server) Reads(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads[path]
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
		if s.V1Only {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") == "" {
			http.Error(w, "missing ttl", http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.tokens++
		s.mu.Unlock()
		w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
		io.WriteString(w, Token)
		return
	}
	if r.Method != http.MethodGet || (!s.V1Only && r.Header.Get("X-Aws-Ec2-Metadata-Token") != Token) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/latest/")
	s.mu.Lock()
	if s.reads == nil {
		s.reads = map[string]int{}
	}
	s.reads[p]++
	state, tag, hasTag := s.state, "", false
	if k, ok := strings.CutPrefix(p, "meta-data/tags/instance/"); ok {
		tag, hasTag = s.tags[k]
	}
	s.mu.Unlock()
	var body string
	switch {
	case p == "meta-data/instance-id" && s.InstanceID != "":
		body = s.InstanceID
	case p == "meta-data/placement/region" && s.Region != "":
		body = s.Region
	case p == "meta-data/autoscaling/target-lifecycle-state" && state != "":
		body = state
	case hasTag:
		body = tag
	case p == "meta-data/iam/security-credentials/" && s.Role != "":
		body = s.Role
	case p == "meta-data/iam/security-credentials/"+s.Role && s.Role != "":
		w.Header().Set("Content-Type", "text/plain")
		json.NewEncoder(w).Encode(map[string]string{
			"Code": "Success", "LastUpdated": time.Now().UTC().Format(time.RFC3339), "Type": "AWS-HMAC",
			"AccessKeyId": s.AccessKeyID, "SecretAccessKey": "imdsfake-secret", "Token": "imdsfake-session-token",
			"Expiration": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		})
		return
	case p == "dynamic/instance-identity/document":
		w.Header().Set("Content-Type", "text/plain")
		json.NewEncoder(w).Encode(map[string]string{
			"instanceId": s.InstanceID, "region": s.Region, "availabilityZone": s.Region + "a",
			"accountId": "123456789012", "architecture": "x86_64", "imageId": "ami-0123456789abcdef0",
			"instanceType": "c6in.large", "privateIp": "198.18.0.10", "version": "2017-09-30",
		})
		return
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, body)
}
