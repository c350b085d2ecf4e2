package awsenv

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv/imdsfake"
)

// isolate keeps the SDK's default chain off the host's AWS setup: static
// keys from the environment, no profile, no region.
func isolate(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDAWSENVTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "awsenv-test-secret")
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
}

func fakeIMDS(t *testing.T, f *imdsfake.Server) string {
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv.URL
}

func newEnv(t *testing.T, c Config) *Env {
	t.Helper()
	e, err := New(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestBuiltOnce: however many consumers ask, concurrently, the SDK
// configuration is loaded once, IMDS hands out one session token, and the
// instance id and region are read from it once each; every service's copy
// shares the credentials and carries its own endpoint override only.
func TestBuiltOnce(t *testing.T) {
	isolate(t)
	md := &imdsfake.Server{InstanceID: "i-0123456789abcdef0", Region: "eu-central-1"}
	c := DefaultConfig()
	c.IMDSEndpoint = fakeIMDS(t, md)
	c.Endpoints = Endpoints{Logs: "http://198.18.0.1:4001", EC2: "http://198.18.0.2:4002", S3: "https://bucket.vpce-0abc.s3.eu-central-1.vpce.amazonaws.com"}
	e := newEnv(t, c)

	services := []string{Logs, EC2, AutoScaling, CloudFormation, S3, SSM, KMS, SecretsManager}
	var wg sync.WaitGroup
	var fails atomic.Int32
	cfgs := make([][]aws.Config, 8)
	for g := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			if id, err := e.InstanceID(ctx); err != nil || id != md.InstanceID {
				t.Errorf("InstanceID = %q, %v", id, err)
				fails.Add(1)
			}
			if r, err := e.Region(ctx); err != nil || r != md.Region {
				t.Errorf("Region = %q, %v", r, err)
			}
			// A consumer using the client directly shares its token.
			if out, err := e.IMDS().GetMetadata(ctx, &imds.GetMetadataInput{Path: "placement/availability-zone"}); err == nil {
				out.Content.Close()
			}
			for _, s := range services {
				ac, err := e.Config(ctx, s)
				if err != nil {
					t.Errorf("Config(%s): %v", s, err)
					return
				}
				cfgs[g] = append(cfgs[g], ac)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if e.loads != 1 {
		t.Errorf("LoadDefaultConfig ran %d times, want 1", e.loads)
	}
	if n := md.Tokens(); n != 1 {
		t.Errorf("IMDS issued %d session tokens, want 1 (one client for everything)", n)
	}
	for _, p := range []string{"meta-data/instance-id", "meta-data/placement/region"} {
		if n := md.Reads(p); n != 1 {
			t.Errorf("%s read %d times, want 1", p, n)
		}
	}
	first := cfgs[0][0].Credentials
	for _, row := range cfgs {
		for i, ac := range row {
			want := c.Endpoints.For(services[i])
			got := ""
			if ac.BaseEndpoint != nil {
				got = *ac.BaseEndpoint
			}
			if got != want {
				t.Errorf("%s BaseEndpoint %q, want %q", services[i], got, want)
			}
			if ac.Region != md.Region {
				t.Errorf("%s region %q", services[i], ac.Region)
			}
			if ac.Credentials != first {
				t.Errorf("%s has its own credentials provider: one cache must serve all", services[i])
			}
		}
	}
	if _, err := e.Config(context.Background(), "dynamodb"); err == nil {
		t.Error("an unknown service got a configuration")
	}
}

// TestRegionSources: aws.region wins and IMDS is not asked for it;
// AWS_REGION comes next; IMDS last.
func TestRegionSources(t *testing.T) {
	isolate(t)
	md := &imdsfake.Server{InstanceID: "i-0123456789abcdef0", Region: "eu-central-1"}
	url := fakeIMDS(t, md)
	e := newEnv(t, Config{Region: "us-west-2", IMDSEndpoint: url})
	if r, err := e.Region(context.Background()); err != nil || r != "us-west-2" {
		t.Fatalf("configured: %q %v", r, err)
	}
	t.Setenv("AWS_REGION", "ap-southeast-2")
	e = newEnv(t, Config{IMDSEndpoint: url})
	if r, err := e.Region(context.Background()); err != nil || r != "ap-southeast-2" {
		t.Fatalf("environment: %q %v", r, err)
	}
	if n := md.Reads("meta-data/placement/region"); n != 0 {
		t.Fatalf("IMDS asked for the region %d times though it was known", n)
	}
}

// TestIMDSv1Refused (was steer's TestDisableSourceDestCheckIMDSv1Refused):
// an IMDS that refuses session tokens (v1 only) gives no instance id:
// there is no fallback to v1.
func TestIMDSv1Refused(t *testing.T) {
	isolate(t)
	md := &imdsfake.Server{InstanceID: "i-0123456789abcdef0", Region: "eu-west-1", V1Only: true}
	e := newEnv(t, Config{IMDSEndpoint: fakeIMDS(t, md)})
	if id, err := e.InstanceID(context.Background()); err == nil {
		t.Fatalf("instance id %q through IMDSv1", id)
	}
	if n := md.Reads("meta-data/instance-id"); n != 0 {
		t.Fatalf("instance-id read %d times without a token", n)
	}
}

// TestIdentity (was cfnsignal's TestIdentity): the instance id and region
// from IMDSv2.
func TestIdentity(t *testing.T) {
	isolate(t)
	e := newEnv(t, Config{IMDSEndpoint: fakeIMDS(t, &imdsfake.Server{InstanceID: "i-0123456789abcdef0", Region: "eu-west-1"})})
	id, err := e.InstanceID(context.Background())
	region, rerr := e.Region(context.Background())
	if err != nil || rerr != nil || id != "i-0123456789abcdef0" || region != "eu-west-1" {
		t.Fatalf("identity = %q %q %v %v", id, region, err, rerr)
	}
}

// TestIdentityHostile (was cfnsignal's): a metadata service without a
// region, answering garbage, or refusing everything gives errors, not
// values; nothing is cached from a failure.
func TestIdentityHostile(t *testing.T) {
	isolate(t)
	for name, h := range map[string]http.Handler{
		"no region": &imdsfake.Server{InstanceID: "i-0123456789abcdef0"},
		"garbage": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut {
				io.WriteString(w, "tok")
				return
			}
			io.WriteString(w, "{not json\n<html>")
		}),
		"401": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(401) }),
	} {
		srv := httptest.NewServer(h)
		e := newEnv(t, Config{IMDSEndpoint: srv.URL})
		ctx := context.Background()
		id, ierr := e.InstanceID(ctx)
		region, rerr := e.Region(ctx)
		switch name {
		case "no region":
			if rerr == nil || !strings.Contains(rerr.Error(), "aws.region") {
				t.Errorf("%s: region %q, %v; want an error naming aws.region", name, region, rerr)
			}
		default:
			if ierr == nil || rerr == nil {
				t.Errorf("%s: instance id %q (%v), region %q (%v), want errors", name, id, ierr, region, rerr)
			}
		}
		if e.base != nil && rerr != nil {
			t.Errorf("%s: a failed load was cached", name)
		}
		srv.Close()
	}
}

// TestIMDSDisabled: nothing is sent to the metadata service; the id and a
// missing region are clear errors naming the key.
func TestIMDSDisabled(t *testing.T) {
	isolate(t)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", srv.URL)
	e := newEnv(t, Config{IMDS: IMDSDisabled})
	if _, err := e.InstanceID(context.Background()); !errors.Is(err, ErrIMDSDisabled) {
		t.Errorf("InstanceID: %v", err)
	}
	if _, err := e.Config(context.Background(), Logs); err == nil || !strings.Contains(err.Error(), "aws.region") {
		t.Errorf("Config without a region: %v", err)
	}
	e = newEnv(t, Config{IMDS: IMDSDisabled, Region: "eu-west-1"})
	if ac, err := e.Config(context.Background(), Logs); err != nil || ac.Region != "eu-west-1" {
		t.Errorf("Config: %v %v", ac.Region, err)
	}
	if hits.Load() != 0 {
		t.Errorf("%d requests reached the metadata service", hits.Load())
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Region: "EU-WEST-1"}, "region: "},
		{Config{Region: "eu-west"}, "region: "},
		{Config{IMDS: "maybe"}, "imds: "},
		{Config{IMDSEndpoint: "169.254.169.254"}, "imds_endpoint: "},
		{Config{IMDSEndpoint: "ftp://169.254.169.254"}, "imds_endpoint: "},
		{Config{IMDS: IMDSDisabled, IMDSEndpoint: "http://169.254.169.254"}, "imds_endpoint: set while imds is disabled"},
		{Config{Endpoints: Endpoints{EC2: "ftp://x"}}, "endpoints.ec2: "},
		{Config{Endpoints: Endpoints{Logs: "http://"}}, "endpoints.logs: "},
		{Config{Endpoints: Endpoints{S3: "https://s3.example/?x=1"}}, "endpoints.s3: "},
		{Config{Endpoints: Endpoints{SSM: "https://user:pw@ssm.example"}}, "endpoints.ssm: "},
	} {
		err := tc.c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want prefix %q", tc.c, err, tc.want)
		}
		if _, err := New(tc.c, nil); err == nil || !strings.HasPrefix(err.Error(), "aws."+tc.want) {
			t.Errorf("New(%+v): got %v, want prefix aws.%s", tc.c, err, tc.want)
		}
	}
	for _, r := range []string{"us-east-1", "eu-central-2", "us-gov-west-1", "cn-northwest-1", "ap-southeast-4", "il-central-1"} {
		c := Config{Region: r}
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", r, err)
		}
	}
	c := Config{}
	if err := c.Validate(); err != nil || c.IMDS != IMDSEnabled {
		t.Errorf("empty section: %v, imds %q", err, c.IMDS)
	}
}

// Every endpoints key has a service constant and back.
func TestEndpointsKeys(t *testing.T) {
	var e Endpoints
	for i, s := range []string{Logs, EC2, AutoScaling, CloudFormation, S3, SSM, KMS, SecretsManager} {
		if !Known(s) {
			t.Fatalf("%s is not a key of aws.endpoints", s)
		}
		e.Set(s, "http://198.18.0."+string(rune('1'+i)))
	}
	if len(e.Overrides()) != len(endpointField) || len(endpointField) != 8 {
		t.Fatalf("overrides %v, fields %v", e.Overrides(), endpointField)
	}
}

// TestRoleCredentialsThroughTheSameClient: with no keys in the
// environment, the SDK's default chain ends at the instance role, read
// through the environment's one IMDS client: the same session token as the
// instance id and region (one token in all), and the role's key signs.
func TestRoleCredentialsThroughTheSameClient(t *testing.T) {
	isolate(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	md := &imdsfake.Server{InstanceID: "i-0123456789abcdef0", Region: "eu-west-1", Role: "gwlbproxy-instance", AccessKeyID: "ASIAIMDSFAKEROLE"}
	e := newEnv(t, Config{IMDSEndpoint: fakeIMDS(t, md)})
	ctx := context.Background()
	if _, err := e.InstanceID(ctx); err != nil {
		t.Fatal(err)
	}
	ac, err := e.Config(ctx, Logs)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := ac.Credentials.Retrieve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if creds.AccessKeyID != "ASIAIMDSFAKEROLE" || creds.SessionToken != "imdsfake-session-token" {
		t.Fatalf("credentials %+v, want the instance role's", creds)
	}
	if n := md.Tokens(); n != 1 {
		t.Fatalf("%d IMDS session tokens for instance id, region and role credentials, want 1", n)
	}
}
