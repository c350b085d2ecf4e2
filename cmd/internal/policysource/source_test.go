package policysource

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/policysource/policyfake"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

const docA = `
default_action: deny
rules:
  - {name: allow-a, action: allow, domains: [a.example]}
`

const docB = `
default_action: deny
rules:
  - {name: allow-a, action: allow, domains: [a.example]}
  - {name: allow-b, action: allow, domains: [b.example], ports: [443]}
`

// awsCfg is the AWS environment's configuration for the fake at
// endpoint (aws.endpoints.s3 / .ssm as BaseEndpoint).
func awsCfg(endpoint string) aws.Config {
	return aws.Config{Region: "us-east-1", RetryMaxAttempts: 1, BaseEndpoint: aws.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDPOLICYFAKE", "secret", "")}
}

func srcCfg(t *testing.T, typ string) policy.SourceConfig {
	c := policy.DefaultSourceConfig()
	c.Source = typ
	c.S3 = policy.S3Source{Bucket: "policies", Key: "fleet/policy.yaml"}
	c.SSM = policy.SSMSource{Parameter: "/gwlbproxy/policy"}
	c.LastGood = filepath.Join(t.TempDir(), "last-good.json")
	c.PollInterval = 5 * time.Second
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestS3SourceConditionalFetch(t *testing.T) {
	fake := policyfake.New()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	fake.PutObject("policies", "fleet/policy.yaml", []byte(docA))
	sc := srcCfg(t, policy.SourceS3)
	f := &S3{Client: NewS3Client(awsCfg(srv.URL), sc), Bucket: sc.S3.Bucket, Key: sc.S3.Key}
	var applied []string
	s := New(sc, f, quiet())
	s.Apply = func(pc policy.Config, v string) error { applied = append(applied, v); return nil }
	pc, v1 := s.Start(context.Background(), 5*time.Second)
	if len(pc.Rules) != 1 || v1 == "" || len(applied) != 1 {
		t.Fatalf("start: %+v %q %v", pc.Rules, v1, applied)
	}
	// Unchanged: a 304, nothing applied.
	if err := s.poll(context.Background()); err != nil || len(applied) != 1 {
		t.Fatalf("unchanged poll: %v %v", err, applied)
	}
	fake.PutObject("policies", "fleet/policy.yaml", []byte(docB))
	if err := s.poll(context.Background()); err != nil || len(applied) != 2 {
		t.Fatalf("changed poll: %v %v", err, applied)
	}
	pc, v2 := s.Current()
	if v2 == v1 || len(pc.Rules) != 2 || pc.Rules[1].Ports[0].Lo != 443 {
		t.Fatalf("after change: %q %+v", v2, pc.Rules)
	}
	// An invalid document is not applied and not saved.
	fake.PutObject("policies", "fleet/policy.yaml", []byte("default_action: maybe\n"))
	err := s.poll(context.Background())
	if err == nil || !strings.Contains(err.Error(), "default_action") || len(applied) != 2 {
		t.Fatalf("invalid doc: %v %v", err, applied)
	}
	if st := s.Status(); !strings.Contains(st.LastError, "default_action") || st.Version != v2 {
		t.Fatalf("status %+v", st)
	}
	// Unknown keys in the document (it cannot move the source) are errors.
	fake.PutObject("policies", "fleet/policy.yaml", []byte("source: file\nrules: []\n"))
	if err := s.poll(context.Background()); err == nil || !strings.Contains(err.Error(), "source") {
		t.Fatalf("source key in the document: %v", err)
	}

	// Cold start, source down: the last good copy (docB) is enforced.
	fake.Down(true)
	s2 := New(sc, &S3{Client: NewS3Client(awsCfg(srv.URL), sc), Bucket: sc.S3.Bucket, Key: sc.S3.Key}, quiet())
	pc, v := s2.Start(context.Background(), 5*time.Second)
	if v != v2 || len(pc.Rules) != 2 || !s2.Status().FromDisk || s2.Healthy() != nil {
		t.Fatalf("cold start from disk: %q %+v %+v", v, pc.Rules, s2.Status())
	}
	// And when the source answers again, the current document wins.
	fake.Down(false)
	fake.PutObject("policies", "fleet/policy.yaml", []byte(docA))
	if err := s2.poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if pc, _ := s2.Current(); len(pc.Rules) != 1 || s2.Status().FromDisk {
		t.Fatalf("after recovery: %+v", pc.Rules)
	}
}

func TestColdStartNothingFailsClosed(t *testing.T) {
	fake := policyfake.New()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	fake.Down(true)
	sc := srcCfg(t, policy.SourceSSM)
	s := New(sc, &SSM{Client: NewSSMClient(awsCfg(srv.URL), sc), Parameter: sc.SSM.Parameter}, quiet())
	pc, v := s.Start(context.Background(), 5*time.Second)
	if v != "fail-closed" || len(pc.Rules) != 0 || pc.DefaultAction != policy.Deny || s.Healthy() == nil {
		t.Fatalf("fail closed: %q %+v %v", v, pc, s.Healthy())
	}
	pol, err := policy.New(pc)
	if err != nil {
		t.Fatal(err)
	}
	if d := pol.Decide(policy.Input{Name: "a.example"}); d.Action != policy.Deny {
		t.Fatalf("fail-closed policy allows: %+v", d)
	}
	// A corrupt last-good file is not used either.
	os.WriteFile(sc.LastGood, []byte("{not json"), 0o600)
	s = New(sc, &SSM{Client: NewSSMClient(awsCfg(srv.URL), sc), Parameter: sc.SSM.Parameter}, quiet())
	if _, v := s.Start(context.Background(), 5*time.Second); v != "fail-closed" {
		t.Fatalf("corrupt last good: %q", v)
	}
}

func TestSSMSource(t *testing.T) {
	fake := policyfake.New()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	sc := srcCfg(t, policy.SourceSSM)
	client := NewSSMClient(awsCfg(srv.URL), sc)
	// The real SDK writes the parameter as an operator's pipeline would.
	put := func(v, tier string) error {
		_, err := client.PutParameter(context.Background(), &ssm.PutParameterInput{
			Name: aws.String(sc.SSM.Parameter), Value: aws.String(v), Type: ssmtypes.ParameterTypeString,
			Overwrite: aws.Bool(true), Tier: ssmtypes.ParameterTier(tier)})
		return err
	}
	if err := put(docA, "Standard"); err != nil {
		t.Fatal(err)
	}
	s := New(sc, &SSM{Client: client, Parameter: sc.SSM.Parameter}, quiet())
	if _, v := s.Start(context.Background(), 5*time.Second); v != "v1" {
		t.Fatalf("start version %q", v)
	}
	if err := put(docB, "Standard"); err != nil {
		t.Fatal(err)
	}
	if err := s.poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if pc, v := s.Current(); v != "v2" || len(pc.Rules) != 2 {
		t.Fatalf("%q %+v", v, pc.Rules)
	}
	// The tiers' limits: over 4 KB needs Advanced, over 8 KB does not fit.
	big := docA + "# " + strings.Repeat("x", 4100) + "\n"
	if err := put(big, "Standard"); err == nil || !strings.Contains(err.Error(), "4096") {
		t.Fatalf("5 KB standard parameter: %v", err)
	}
	if err := put(big, "Advanced"); err != nil {
		t.Fatalf("5 KB advanced parameter: %v", err)
	}
	if err := put(docA+"# "+strings.Repeat("x", 8200)+"\n", "Advanced"); err == nil {
		t.Fatal("9 KB advanced parameter accepted")
	}
	// A missing parameter is an error that keeps the policy in force.
	sc2 := sc
	sc2.SSM.Parameter = "/gwlbproxy/missing"
	s2 := New(sc2, &SSM{Client: client, Parameter: sc2.SSM.Parameter}, quiet())
	err := s2.poll(context.Background())
	var nf *ssmtypes.ParameterNotFound
	if !errors.As(err, &nf) {
		t.Fatalf("missing parameter: %v", err)
	}
}

// TestHostileDocuments: oversize, a YAML alias bomb, a non-policy key and
// a rule that fails validation are all refused and keep the policy in
// force; nothing of them reaches the last good copy.
func TestHostileDocuments(t *testing.T) {
	fake := policyfake.New()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	fake.PutObject("policies", "fleet/policy.yaml", []byte(docA))
	sc := srcCfg(t, policy.SourceS3)
	s := New(sc, &S3{Client: NewS3Client(awsCfg(srv.URL), sc), Bucket: sc.S3.Bucket, Key: sc.S3.Key}, quiet())
	_, v1 := s.Start(context.Background(), 5*time.Second)
	good, err := os.ReadFile(sc.LastGood)
	if err != nil {
		t.Fatal(err)
	}
	bomb := "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
	for name, doc := range map[string]string{
		"oversize":      docA + "# " + strings.Repeat("x", MaxDocument) + "\n",
		"alias bomb":    bomb,
		"other key":     docA + "ssrf: {allow_cgnat: true}\n",
		"bad rule":      "rules:\n  - {name: x, action: allow, domains: ['bad name!']}\n",
		"not yaml":      "rules: [\n",
		"control chars": "rules:\n  - {name: \"a\\nb\\u001b[31m\", action: allowed}\n",
	} {
		fake.PutObject("policies", "fleet/policy.yaml", []byte(doc))
		err := s.poll(context.Background())
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.ContainsAny(err.Error(), "\n\x1b") {
			t.Errorf("%s: error spans lines or carries escapes: %q", name, err)
		}
		if _, v := s.Current(); v != v1 {
			t.Errorf("%s: version now %q", name, v)
		}
	}
	if now, _ := os.ReadFile(sc.LastGood); string(now) != string(good) {
		t.Fatal("last good copy overwritten by a refused document")
	}
}
