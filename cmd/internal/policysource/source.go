// Package policysource keeps one policy for a fleet: every appliance polls
// the same S3 object or SSM parameter (proxy.policy.source) and puts each
// new valid version in force, so all converge within one poll interval.
// The last valid document is kept on disk: a cold start with the source
// unreachable enforces it; with none, the appliance denies everything
// until the source answers (fail closed).
package policysource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// MaxDocument bounds a fetched policy document.
const MaxDocument = 1 << 20

// ErrNotModified: the source still holds the version last fetched.
var ErrNotModified = errors.New("policy source: not modified")

// Fetcher reads the policy document from a source.
type Fetcher interface {
	// Fetch returns the document and its version, or ErrNotModified when
	// the version is still known.
	Fetch(ctx context.Context, known string) (doc []byte, version string, err error)
	// Describe names the source in logs ("s3://bucket/key").
	Describe() string
}

// S3 fetches an object, conditionally on its ETag.
type S3 struct {
	Client      *s3.Client
	Bucket, Key string

	mu   sync.Mutex
	etag string // of the version known
	ver  string
}

// NewS3Client is an S3 client for the AWS environment's configuration
// for S3 (path-style when aws.endpoints.s3 overrides the endpoint, as the
// fakes and S3 interface endpoints without private DNS need); src.Region,
// when set, is the bucket's region.
func NewS3Client(awsCfg aws.Config, src policy.SourceConfig) *s3.Client {
	return s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if src.Region != "" {
			o.Region = src.Region
		}
		if o.BaseEndpoint != nil {
			o.UsePathStyle = true
		}
		// The document is validated in full before use; no checksum
		// headers are required of the object.
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
}

// NewSSMClient is an SSM client for the AWS environment's configuration
// for SSM; src.Region, when set, is the parameter's region.
func NewSSMClient(awsCfg aws.Config, src policy.SourceConfig) *ssm.Client {
	return ssm.NewFromConfig(awsCfg, func(o *ssm.Options) {
		if src.Region != "" {
			o.Region = src.Region
		}
	})
}

func (f *S3) Describe() string { return "s3://" + f.Bucket + "/" + f.Key }

func (f *S3) Fetch(ctx context.Context, known string) ([]byte, string, error) {
	in := &s3.GetObjectInput{Bucket: aws.String(f.Bucket), Key: aws.String(f.Key)}
	f.mu.Lock()
	if known != "" && known == f.ver && f.etag != "" {
		in.IfNoneMatch = aws.String(f.etag)
	}
	f.mu.Unlock()
	out, err := f.Client.GetObject(ctx, in)
	if err != nil {
		var re *awshttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() == 304 {
			return nil, "", ErrNotModified
		}
		return nil, "", fmt.Errorf("%s: %w", f.Describe(), err)
	}
	defer out.Body.Close()
	doc, err := io.ReadAll(io.LimitReader(out.Body, MaxDocument+1))
	if err != nil {
		return nil, "", fmt.Errorf("%s: reading: %w", f.Describe(), err)
	}
	if len(doc) > MaxDocument {
		return nil, "", fmt.Errorf("%s: larger than %d bytes", f.Describe(), MaxDocument)
	}
	etag := strings.Trim(aws.ToString(out.ETag), `"`)
	ver := aws.ToString(out.VersionId)
	if ver == "" || ver == "null" { // unversioned bucket
		ver = etag
	}
	if len(ver) > 16 {
		ver = ver[:16]
	}
	f.mu.Lock()
	f.etag, f.ver = aws.ToString(out.ETag), ver
	f.mu.Unlock()
	if ver == known {
		return nil, "", ErrNotModified
	}
	return doc, ver, nil
}

// SSM fetches a parameter; its version number is the version.
type SSM struct {
	Client    *ssm.Client
	Parameter string
}

func (f *SSM) Describe() string { return "ssm:" + f.Parameter }

func (f *SSM) Fetch(ctx context.Context, known string) ([]byte, string, error) {
	out, err := f.Client.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(f.Parameter), WithDecryption: aws.Bool(true)})
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", f.Describe(), err)
	}
	if out.Parameter == nil {
		return nil, "", fmt.Errorf("%s: no parameter in the answer", f.Describe())
	}
	ver := "v" + strconv.FormatInt(out.Parameter.Version, 10)
	if ver == known {
		return nil, "", ErrNotModified
	}
	return []byte(aws.ToString(out.Parameter.Value)), ver, nil
}

// Status is the source's state for the health body.
type Status struct {
	Source      string     `json:"source"`
	Version     string     `json:"source_version"`
	LastFetch   *time.Time `json:"last_fetch,omitempty"`
	LastError   string     `json:"last_fetch_error,omitempty"`
	FromDisk    bool       `json:"from_last_good_copy,omitempty"`
	FailClosed  bool       `json:"fail_closed,omitempty"`
	Fetches     uint64     `json:"fetches"`
	FetchErrors uint64     `json:"fetch_errors"`
}

// Source polls a Fetcher and hands every new valid policy to Apply.
type Source struct {
	cfg   policy.SourceConfig
	fetch Fetcher
	log   *slog.Logger
	// Apply puts a policy in force; an error (the proxy refused it)
	// keeps the previous one and the document is not saved as good.
	Apply func(pc policy.Config, version string) error

	mu      sync.Mutex
	cur     policy.Config
	version string
	status  Status
}

// New makes a source; call Start, then Run.
func New(cfg policy.SourceConfig, f Fetcher, log *slog.Logger) *Source {
	return &Source{cfg: cfg, fetch: f, log: log, status: Status{Source: f.Describe()}}
}

// lastGood is the on-disk copy.
type lastGood struct {
	Source   string    `json:"source"`
	Version  string    `json:"version"`
	Fetched  time.Time `json:"fetched"`
	Document string    `json:"document"`
}

// Start loads the policy to start with: the source's current document if
// it answers within timeout, else the last good copy, else a policy that
// denies everything (fail closed). It never fails: an appliance without a
// policy must still come up, deny, and keep asking.
func (s *Source) Start(ctx context.Context, timeout time.Duration) (policy.Config, string) {
	fctx, cancel := context.WithTimeout(ctx, timeout)
	err := s.poll(fctx)
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		return s.cur, s.version
	}
	s.log.Error("policy source unreachable at start", "source", s.fetch.Describe(), "err", err)
	if pc, ver, err := s.readLastGood(); err == nil {
		s.cur, s.version = pc, ver
		s.status.FromDisk, s.status.Version = true, ver
		s.log.Warn("enforcing the last good copy of the policy until the source answers", "path", s.cfg.LastGood, "source_version", ver)
		return pc, ver
	} else {
		s.log.Error("no usable last good copy of the policy: denying everything until the source answers", "path", s.cfg.LastGood, "err", err)
	}
	pc := policy.DefaultConfig()
	pc.Source = s.cfg
	s.cur, s.version = pc, "fail-closed"
	s.status.FailClosed, s.status.Version = true, s.version
	return pc, s.version
}

// Run polls every poll_interval until ctx ends.
func (s *Source) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fctx, cancel := context.WithTimeout(ctx, min(s.cfg.PollInterval, 30*time.Second))
			if err := s.poll(fctx); err != nil && ctx.Err() == nil {
				s.log.Warn("policy source poll failed; the policy in force stays", "source", s.fetch.Describe(), "err", err)
			}
			cancel()
		}
	}
}

// Current is the policy in force from this source and its version.
func (s *Source) Current() (policy.Config, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur, s.version
}

// Status for the health body.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Healthy is an error only while failing closed (no policy at all).
func (s *Source) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.FailClosed {
		return fmt.Errorf("policy: %s unreachable and no last good copy: denying everything", s.fetch.Describe())
	}
	return nil
}

// poll fetches once; a new valid document is applied and saved.
func (s *Source) poll(ctx context.Context) error {
	s.mu.Lock()
	known := s.version
	s.mu.Unlock()
	doc, ver, err := s.fetch.Fetch(ctx, known)
	now := time.Now().UTC()
	s.mu.Lock()
	s.status.Fetches++
	s.status.LastFetch = &now
	s.mu.Unlock()
	if errors.Is(err, ErrNotModified) {
		s.setErr("")
		return nil
	}
	if err != nil {
		s.setErr(err.Error())
		return err
	}
	pc, err := config.DecodePolicy(doc, s.cfg)
	if err != nil {
		err = fmt.Errorf("%s version %s is invalid, not applied: %w", s.fetch.Describe(), ver, err)
		s.setErr(err.Error())
		return err
	}
	if s.Apply != nil {
		if err := s.Apply(pc, ver); err != nil {
			err = fmt.Errorf("%s version %s refused: %w", s.fetch.Describe(), ver, err)
			s.setErr(err.Error())
			return err
		}
	}
	s.mu.Lock()
	s.cur, s.version = pc, ver
	s.status.Version, s.status.FromDisk, s.status.FailClosed, s.status.LastError = ver, false, false, ""
	s.mu.Unlock()
	if err := s.writeLastGood(doc, ver); err != nil {
		s.log.Warn("saving the last good copy of the policy", "path", s.cfg.LastGood, "err", err)
	}
	s.log.Info("policy fetched", "source", s.fetch.Describe(), "source_version", ver, "rules", len(pc.Rules))
	return nil
}

func (s *Source) setErr(e string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e != "" {
		s.status.FetchErrors++
	}
	s.status.LastError = e
}

func (s *Source) writeLastGood(doc []byte, ver string) error {
	b, err := json.Marshal(lastGood{Source: s.fetch.Describe(), Version: ver, Fetched: time.Now().UTC(), Document: string(doc)})
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.cfg.LastGood)
	f, err := os.CreateTemp(dir, ".policy-last-good-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), s.cfg.LastGood)
}

func (s *Source) readLastGood() (policy.Config, string, error) {
	b, err := os.ReadFile(s.cfg.LastGood)
	if err != nil {
		return policy.Config{}, "", err
	}
	var lg lastGood
	if err := json.Unmarshal(b, &lg); err != nil {
		return policy.Config{}, "", fmt.Errorf("%s: %w", s.cfg.LastGood, err)
	}
	if lg.Source != s.fetch.Describe() {
		return policy.Config{}, "", fmt.Errorf("%s holds the policy of %s, not %s", s.cfg.LastGood, lg.Source, s.fetch.Describe())
	}
	pc, err := config.DecodePolicy([]byte(lg.Document), s.cfg)
	if err != nil {
		return policy.Config{}, "", fmt.Errorf("%s: %w", s.cfg.LastGood, err)
	}
	return pc, lg.Version, nil
}
