//go:build linux

package awsenv_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/gwlbproxy/gwlbproxy/ca"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv/imdsfake"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/cfnsignal"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/cfnsignal/cfnfake"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/lifecycle"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/lifecycle/asfake"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/policysource"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/policysource/policyfake"
	"github.com/gwlbproxy/gwlbproxy/logship"
	"github.com/gwlbproxy/gwlbproxy/logship/cwlfake"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/tunnel/steer"
)

// The app passes ca.source and proxy.policy.source straight to
// Env.Config: their values must be the service names.
func TestSourceNamesAreServices(t *testing.T) {
	for _, s := range []string{ca.SourceKMS, ca.SourceSecretsManager, policy.SourceS3, policy.SourceSSM} {
		if !awsenv.Known(s) {
			t.Errorf("source %q is not a service name of aws.endpoints", s)
		}
	}
}

// call is one request a fake saw: the SigV4 scope's region and service,
// and the operation.
type call struct{ key, region, service, op string }

var scopeRE = regexp.MustCompile(`Credential=([^/]+)/[0-9]{8}/([^/]+)/([^/]+)/aws4_request`)

// recorder wraps a fake (or, with next nil, answers every request with a
// client error in the request's protocol, after recording it).
type recorder struct {
	next  http.Handler
	mu    sync.Mutex
	calls []call
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	c := call{op: req.Header.Get("X-Amz-Target")}
	if m := scopeRE.FindStringSubmatch(req.Header.Get("Authorization")); m != nil {
		c.key, c.region, c.service = m[1], m[2], m[3]
	}
	if r.next == nil && c.op == "" && req.Method == http.MethodPost {
		b, _ := io.ReadAll(io.LimitReader(req.Body, 1<<16))
		for _, kv := range strings.Split(string(b), "&") {
			if v, ok := strings.CutPrefix(kv, "Action="); ok {
				c.op = v
			}
		}
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	switch {
	case r.next != nil:
		r.next.ServeHTTP(w, req)
	case req.Header.Get("X-Amz-Target") != "":
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(400)
		io.WriteString(w, `{"__type":"ValidationException","message":"recorded"}`)
	default:
		w.Header().Set("Content-Type", "text/xml")
		w.WriteHeader(400)
		io.WriteString(w, `<Response><Errors><Error><Code>InvalidParameterValue</Code><Message>recorded</Message></Error></Errors><RequestID>r</RequestID></Response>`)
	}
}

func (r *recorder) seen() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

func serve(t *testing.T, h http.Handler) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestOverridesReachEveryConsumer builds the environment from a
// configuration file's aws: section, as `run` does, and drives every
// consumer's real SDK client through it: each request arrives at the
// service's own fake (aws.endpoints.<svc>), signed for the region IMDS
// gave, with the keys of the one credentials chain; the log stream is
// named after the instance id IMDS gave (was logship's TestStreamFromIMDS),
// and IMDS issued one session token for all of it.
func TestOverridesReachEveryConsumer(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDCONSUMERS")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "consumers-secret")
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_ENDPOINT_URL", "")

	md := &imdsfake.Server{InstanceID: "i-0feedfacecafe0001", Region: "eu-central-1"}
	md.SetState("Terminated")
	md.SetTag("aws:autoscaling:groupName", "gwlbproxy-asg")
	cwl := cwlfake.New(cwlfake.Options{})
	cfn := &cfnfake.CloudFormation{Waiting: map[string]bool{"egress/AutoScalingGroup": true}}
	as := &asfake.Server{}
	pol := policyfake.New()
	pol.PutObject("policies", "fleet.yaml", []byte("default_action: deny\n"))
	if _, err := pol.PutParameter("/gwlbproxy/policy", "default_action: deny\n", "Standard"); err != nil {
		t.Fatal(err)
	}
	rec := map[string]*recorder{
		awsenv.Logs: {next: cwl}, awsenv.CloudFormation: {next: cfn}, awsenv.S3: {next: pol}, awsenv.SSM: {next: pol},
		awsenv.AutoScaling: {next: as}, awsenv.EC2: {}, awsenv.KMS: {}, awsenv.SecretsManager: {},
	}
	doc := "aws:\n  imds_endpoint: " + serve(t, md) + "\n  endpoints:\n"
	for svc, r := range rec {
		doc += "    " + svc + ": " + serve(t, r) + "\n"
	}
	c, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	env, err := awsenv.New(c.AWS, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfgFor := func(svc string) aws.Config {
		ac, err := env.Config(ctx, svc)
		if err != nil {
			t.Fatalf("%s: %v", svc, err)
		}
		return ac
	}
	quiet := slog.New(slog.DiscardHandler)
	id, err := env.InstanceID(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// logship: the cloudwatch sink, stream from the instance id.
	lc := logship.DefaultConfig()
	lc.Sink = logship.SinkCloudWatch
	lc.CloudWatch.LogGroup, lc.CloudWatch.CreateGroup = "/gwlbproxy/records", true
	lc.CloudWatch.AWS = cfgFor(awsenv.Logs)
	lc.InstanceID = id
	dir := t.TempDir()
	lc.Spool.Dir, lc.DeadLetterPath = filepath.Join(dir, "spool"), filepath.Join(dir, "dl.jsonl")
	lc.FlushInterval = 10 * time.Millisecond
	sh, err := logship.New(ctx, lc, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	sh.Ship(time.Now(), []byte(`{"record_id":"r1"}`))
	if err := sh.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := cwl.Streams("/gwlbproxy/records"); len(st) != 1 || st[0] != "i-0feedfacecafe0001" {
		t.Errorf("log streams %v, want the IMDS instance id", st)
	}

	// lifecycle: state and group from IMDS, the hook completed on Auto Scaling.
	lcfg := lifecycle.DefaultConfig()
	lcfg.Enabled = true
	w := lifecycle.New(lcfg, env, lifecycle.NewClient(cfgFor(awsenv.AutoScaling)), quiet)
	if err := w.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Complete(ctx, id); err != nil {
		t.Error(err)
	}
	if c := as.Calls(); len(c) != 1 || c[0].Params.Get("AutoScalingGroupName") != "gwlbproxy-asg" || c[0].Params.Get("InstanceId") != id {
		t.Errorf("CompleteLifecycleAction calls %+v", c)
	}

	// steer: disable_source_dest_check's EC2 call.
	_ = steer.DisableSourceDestCheck(ctx, id, ec2.NewFromConfig(cfgFor(awsenv.EC2)))

	// cfn-signal.
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	err = cfnsignal.Send(sctx, cfnsignal.NewClient(cfgFor(awsenv.CloudFormation)), cfnsignal.Signal{Stack: "egress", Resource: "AutoScalingGroup", UniqueID: id, Success: true}, quiet)
	scancel()
	if err != nil || len(cfn.Signals()) != 1 {
		t.Errorf("cfn-signal: %v, signals %v", err, cfn.Signals())
	}

	// Fleet policy from S3 and SSM.
	sc := policy.DefaultSourceConfig()
	s3f := &policysource.S3{Client: policysource.NewS3Client(cfgFor(awsenv.S3), sc), Bucket: "policies", Key: "fleet.yaml"}
	if doc, _, err := s3f.Fetch(ctx, ""); err != nil || !strings.Contains(string(doc), "deny") {
		t.Errorf("s3 policy: %q %v", doc, err)
	}
	ssmf := &policysource.SSM{Client: policysource.NewSSMClient(cfgFor(awsenv.SSM), sc), Parameter: "/gwlbproxy/policy"}
	if doc, _, err := ssmf.Fetch(ctx, ""); err != nil || !strings.Contains(string(doc), "deny") {
		t.Errorf("ssm policy: %q %v", doc, err)
	}

	// CA: KMS and Secrets Manager.
	_, _ = ca.NewKMSSigner(ctx, kms.NewFromConfig(cfgFor(awsenv.KMS)), "alias/gwlbproxy")
	_, _ = ca.LoadSecretsManager(ctx, secretsmanager.NewFromConfig(cfgFor(awsenv.SecretsManager)), "arn:aws:secretsmanager:eu-central-1:123456789012:secret:ca")

	sigv4Name := map[string]string{awsenv.SecretsManager: "secretsmanager", awsenv.AutoScaling: "autoscaling"}
	for svc, r := range rec {
		calls := r.seen()
		t.Logf("%s: %+v", svc, calls)
		if len(calls) == 0 {
			t.Errorf("%s: no request reached its endpoint override", svc)
			continue
		}
		want := svc
		if n, ok := sigv4Name[svc]; ok {
			want = n
		}
		for _, c := range calls {
			if c.key != "AKIDCONSUMERS" || c.region != "eu-central-1" || c.service != want {
				t.Errorf("%s: request %+v, want signed with the environment's key for %s in the IMDS region eu-central-1", svc, c, want)
			}
		}
	}
	if n := md.Tokens(); n != 1 {
		t.Errorf("IMDS issued %d session tokens for all consumers, want 1", n)
	}
}
