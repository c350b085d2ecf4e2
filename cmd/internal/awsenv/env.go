// Package awsenv is the appliance's one AWS environment: the SDK
// configuration (region, the SDK's default credential chain, HTTP client
// and retryer), the instance metadata (IMDSv2) client, and the instance's
// id and region, built once from the `aws:` section by the composition
// root and handed to every consumer (log shipper, steering, lifecycle,
// CA, fleet policy source, cfn-signal).
//
// Before it, each consumer loaded its own configuration and asked IMDS
// with its own client and endpoint key, so a VPC endpoint or metadata
// override set in one place silently missed the others. Now an override
// in aws.endpoints or aws.imds_endpoint reaches every client, one IMDS
// session token serves every metadata read, and one credentials cache
// serves every call.
//
// Nothing is fetched until asked: an appliance that uses no AWS service
// (the demo's stdout sink) never loads the SDK configuration or talks to
// IMDS. What was fetched successfully is kept; a failure is returned with
// the key to fix and tried again on the next call.
package awsenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// Timeouts of the metadata reads done here. Outside EC2 the instance id is
// given up on quickly (the host name names the appliance instead).
const (
	InstanceIDTimeout = 2 * time.Second
	RegionTimeout     = 5 * time.Second
	LoadTimeout       = 30 * time.Second
)

// instanceIDRE is an EC2 instance id (8 or 17 hex digits); anything else
// from "IMDS" (a captive portal, a proxy's error page) is refused, since
// the id names log streams and completes lifecycle hooks.
var instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)

// ErrIMDSDisabled is returned for metadata when aws.imds is disabled.
var ErrIMDSDisabled = errors.New("instance metadata is disabled (aws.imds: disabled)")

// Env is the AWS environment. Its methods are safe for concurrent use.
type Env struct {
	cfg Config
	log *slog.Logger
	md  *imds.Client

	mu    sync.Mutex  // guards base and loads, held while loading
	base  *aws.Config // loaded once
	loads int         // LoadDefaultConfig calls (tests)

	idMu       sync.Mutex // guards instanceID, held while asking
	instanceID string
}

// New validates cfg and returns the environment; it does no I/O.
func New(cfg Config, log *slog.Logger) (*Env, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("aws.%w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := imds.Options{
		Endpoint: cfg.IMDSEndpoint,
		// IMDSv2 only: a session token first, no fallback to v1's
		// unauthenticated GETs (the stack requires tokens anyway).
		EnableFallback:    aws.FalseTernary,
		ClientEnableState: imds.ClientEnabled,
	}
	if cfg.IMDS == IMDSDisabled {
		opts.ClientEnableState = imds.ClientDisabled
	}
	return &Env{cfg: cfg, log: log, md: imds.New(opts)}, nil
}

// IMDS returns the one instance metadata client. With aws.imds disabled
// its calls fail (the SDK's "access disabled" error).
func (e *Env) IMDS() *imds.Client { return e.md }

// Metadata reads one IMDS meta-data path (e.g. "instance-id"), trimmed,
// at most 4 KiB.
func (e *Env) Metadata(ctx context.Context, path string) (string, error) {
	if e.cfg.IMDS == IMDSDisabled {
		return "", fmt.Errorf("imds %s: %w", path, ErrIMDSDisabled)
	}
	out, err := e.md.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", fmt.Errorf("imds %s: %w", path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 4096))
	if err != nil {
		return "", fmt.Errorf("imds %s: %w", path, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("imds %s: empty answer", path)
	}
	return v, nil
}

// InstanceID returns the EC2 instance id from IMDS (within
// InstanceIDTimeout), cached after the first success.
func (e *Env) InstanceID(ctx context.Context) (string, error) {
	// Its own lock, held while asking: concurrent first callers wait for
	// the one read instead of each asking IMDS.
	e.idMu.Lock()
	defer e.idMu.Unlock()
	if e.instanceID != "" {
		return e.instanceID, nil
	}
	ctx, cancel := context.WithTimeout(ctx, InstanceIDTimeout)
	defer cancel()
	id, err := e.Metadata(ctx, "instance-id")
	if err != nil {
		return "", fmt.Errorf("instance id: %w", err)
	}
	if !instanceIDRE.MatchString(id) {
		return "", fmt.Errorf("instance id: IMDS answered %.40q, not an EC2 instance id", id)
	}
	e.instanceID = id
	return id, nil
}

// Region returns the region every client uses: aws.region, else
// AWS_REGION or the shared config profile's, else IMDS's
// placement/region. It loads the SDK configuration if not yet done.
func (e *Env) Region(ctx context.Context) (string, error) {
	c, err := e.load(ctx)
	if err != nil {
		return "", err
	}
	return c.Region, nil
}

// Config returns the SDK configuration for service (one of the service
// constants): the shared configuration with aws.endpoints' override for
// that service, if any, as its BaseEndpoint. The credentials cache, HTTP
// client and retryer are shared by every service's copy.
func (e *Env) Config(ctx context.Context, service string) (aws.Config, error) {
	if !Known(service) {
		return aws.Config{}, fmt.Errorf("awsenv: unknown service %q", service)
	}
	c, err := e.load(ctx)
	if err != nil {
		return aws.Config{}, err
	}
	if ep := e.cfg.Endpoints.For(service); ep != "" {
		c.BaseEndpoint = aws.String(ep)
	}
	// Each copy's slices are clipped: a client appending its own
	// middleware must not write into another consumer's backing array.
	c.APIOptions = slices.Clip(c.APIOptions)
	c.ConfigSources = slices.Clip(c.ConfigSources)
	return c, nil
}

// load runs the SDK's LoadDefaultConfig once (under the lock, so
// concurrent first callers wait for the one load) and completes the
// region from IMDS when nothing else named it.
func (e *Env) load(ctx context.Context) (aws.Config, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.base != nil {
		return *e.base, nil
	}
	ctx, cancel := context.WithTimeout(ctx, LoadTimeout)
	defer cancel()
	opts := []func(*awsconfig.LoadOptions) error{}
	if e.cfg.Region != "" {
		opts = append(opts, awsconfig.WithRegion(e.cfg.Region))
	}
	if e.cfg.IMDS == IMDSDisabled {
		opts = append(opts, awsconfig.WithEC2IMDSClientEnableState(imds.ClientDisabled))
	} else {
		if e.cfg.IMDSEndpoint != "" {
			opts = append(opts, awsconfig.WithEC2IMDSEndpoint(e.cfg.IMDSEndpoint))
		}
		// The instance role's credentials come through the same client
		// (and session token) as every other metadata read.
		opts = append(opts, awsconfig.WithEC2RoleCredentialOptions(func(o *ec2rolecreds.Options) { o.Client = e.md }))
	}
	e.loads++
	c, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("aws: loading the SDK configuration: %w", err)
	}
	if c.Region == "" {
		if e.cfg.IMDS == IMDSDisabled {
			return aws.Config{}, errors.New("aws.region: not set, and neither AWS_REGION nor the shared config names one (aws.imds is disabled, so the instance's region is not asked)")
		}
		rctx, cancel := context.WithTimeout(ctx, RegionTimeout)
		r, err := e.Metadata(rctx, "placement/region")
		cancel()
		if err != nil {
			return aws.Config{}, fmt.Errorf("aws.region: not set, and the instance's region could not be read: %w", err)
		}
		c.Region = r
	}
	if !regionRE.MatchString(c.Region) {
		return aws.Config{}, fmt.Errorf("aws.region: %q (from the environment or IMDS) is not an AWS region name", c.Region)
	}
	e.base = &c
	e.log.Debug("aws environment loaded", "region", c.Region, "imds", e.cfg.IMDS, "endpoint_overrides", len(e.cfg.Endpoints.Overrides()))
	return c, nil
}
