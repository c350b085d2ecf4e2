package lifecycle

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv/imdsfake"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/lifecycle/asfake"
)

// newMetadata serves an IMDSv2 fake (imdsfake) in the given lifecycle
// state with the given instance tags, and returns the appliance's AWS
// environment reading it.
func newMetadata(t *testing.T, state string, tags map[string]string) (*imdsfake.Server, *awsenv.Env) {
	fake := &imdsfake.Server{InstanceID: "i-0123456789abcdef0", Region: "us-east-1"}
	fake.SetState(state)
	for k, v := range tags {
		fake.SetTag(k, v)
	}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	c := awsenv.DefaultConfig()
	c.IMDSEndpoint = srv.URL
	env, err := awsenv.New(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fake, env
}

func TestWaitThenComplete(t *testing.T) {
	md, env := newMetadata(t, "InService", map[string]string{"aws:autoscaling:groupName": "gwlbproxy-asg"})
	as := &asfake.Server{}
	asSrv := httptest.NewServer(as)
	defer asSrv.Close()

	cfg := DefaultConfig()
	cfg.Enabled = true
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.PollInterval = 20 * time.Millisecond // below the configurable minimum, to keep the test short
	awsCfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		BaseEndpoint: aws.String(asSrv.URL)}
	w := New(cfg, env, NewClient(awsCfg), slog.New(slog.NewTextHandler(t.Output(), nil)))

	done := make(chan error, 1)
	go func() { done <- w.Wait(context.Background()) }()
	select {
	case err := <-done:
		t.Fatalf("Wait returned while InService: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	md.SetState("Terminated")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not notice Terminated")
	}

	if err := w.Complete(context.Background(), "i-0123456789abcdef0"); err != nil {
		t.Fatal(err)
	}
	calls := as.Calls()
	if len(calls) != 1 {
		t.Fatalf("calls: %v", calls)
	}
	c := calls[0].Params
	for k, want := range map[string]string{
		"AutoScalingGroupName": "gwlbproxy-asg", "LifecycleHookName": "gwlbproxy-drain",
		"LifecycleActionResult": "CONTINUE", "InstanceId": "i-0123456789abcdef0",
	} {
		if c.Get(k) != want {
			t.Errorf("%s = %q, want %q", k, c.Get(k), want)
		}
	}
}

func TestWaitCancelled(t *testing.T) {
	_, env := newMetadata(t, "InService", nil)
	cfg := DefaultConfig()
	cfg.PollInterval = 10 * time.Millisecond
	w := New(cfg, env, nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := w.Wait(ctx); err == nil {
		t.Fatal("want ctx error")
	}
}

func TestCompleteNeedsGroup(t *testing.T) {
	_, env := newMetadata(t, "Terminated", nil) // no tags exposed
	cfg := DefaultConfig()
	w := New(cfg, env, nil, slog.New(slog.DiscardHandler))
	err := w.Complete(context.Background(), "i-1")
	if err == nil || !strings.Contains(err.Error(), "lifecycle.group_name") {
		t.Fatalf("got %v", err)
	}
}

func TestValidate(t *testing.T) {
	c := DefaultConfig()
	c.Enabled = true
	c.PollInterval = time.Millisecond
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "poll_interval:") {
		t.Fatalf("got %v", err)
	}
}
