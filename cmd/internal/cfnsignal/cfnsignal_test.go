package cfnsignal

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/cfnsignal/cfnfake"
)

func testClient(t *testing.T, fake http.Handler) API {
	t.Helper()
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	cfg := aws.Config{
		Region:       "eu-west-1",
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
		BaseEndpoint: aws.String(srv.URL),
	}
	return NewClient(cfg)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestSendThroughRetries(t *testing.T) {
	fake := &cfnfake.CloudFormation{
		Waiting: map[string]bool{"egress/AutoScalingGroup": true},
		// The SDK retries these itself (3 attempts), then Send's own loop.
		Fail: []string{"Throttling", "InternalFailure", "Throttling", "InternalFailure"},
	}
	api := testClient(t, fake)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sig := Signal{Stack: "egress", Resource: "AutoScalingGroup", UniqueID: "i-0abc", Success: true}
	if err := Send(ctx, api, sig, quiet); err != nil {
		t.Fatal(err)
	}
	got := fake.Signals()
	if len(got) != 1 || got[0] != (cfnfake.Signal{StackName: "egress", LogicalResourceID: "AutoScalingGroup", UniqueID: "i-0abc", Status: "SUCCESS"}) {
		t.Fatalf("signals = %+v", got)
	}
	if fake.Calls() != 5 {
		t.Errorf("%d calls, want 4 failures then the success", fake.Calls())
	}
}

func TestSendFailureStatus(t *testing.T) {
	fake := &cfnfake.CloudFormation{Waiting: map[string]bool{"egress/AutoScalingGroup": true}}
	sig := Signal{Stack: "egress", Resource: "AutoScalingGroup", UniqueID: "i-0abc"}
	if err := Send(context.Background(), testClient(t, fake), sig, quiet); err != nil {
		t.Fatal(err)
	}
	if got := fake.Signals(); len(got) != 1 || got[0].Status != "FAILURE" {
		t.Fatalf("signals = %+v", got)
	}
}

// A resource not waiting for signals (a scale-out launch) answers
// ValidationError: final, no retry loop.
func TestSendNotSignalable(t *testing.T) {
	fake := &cfnfake.CloudFormation{}
	sig := Signal{Stack: "egress", Resource: "AutoScalingGroup", UniqueID: "i-0abc", Success: true}
	err := Send(context.Background(), testClient(t, fake), sig, quiet)
	if !errors.Is(err, ErrNotSignalable) {
		t.Fatalf("err = %v, want ErrNotSignalable", err)
	}
	if fake.Calls() != 1 {
		t.Errorf("%d calls for a ValidationError, want 1", fake.Calls())
	}
}

func TestSendGivesUpAtDeadline(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens: connection refused, as before a route exists
	api := NewClient(aws.Config{Region: "eu-west-1", Credentials: credentials.NewStaticCredentialsProvider("a", "b", ""), BaseEndpoint: aws.String(srv.URL)})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := Send(ctx, api, Signal{Stack: "s", Resource: "r", UniqueID: "i"}, quiet)
	if err == nil || errors.Is(err, ErrNotSignalable) {
		t.Fatalf("err = %v, want a give-up error", err)
	}
}

// The instance id and region come from the AWS environment: see
// cmd/internal/awsenv's TestIdentity and TestIdentityHostile.

func TestWaitHealthy(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	if err := WaitHealthy(context.Background(), srv.URL, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer bad.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := WaitHealthy(ctx, bad.URL, 10*time.Millisecond); err == nil {
		t.Fatal("a 503 health check passed")
	}
}

// A fresh instance role can answer AccessDenied for a few seconds: that is
// retried, not treated as final.
func TestSendRetriesAccessDenied(t *testing.T) {
	fake := &cfnfake.CloudFormation{
		Waiting: map[string]bool{"egress/AutoScalingGroup": true},
		Fail:    []string{"AccessDenied"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sig := Signal{Stack: "egress", Resource: "AutoScalingGroup", UniqueID: "i-0abc", Success: true}
	if err := Send(ctx, testClient(t, fake), sig, quiet); err != nil {
		t.Fatal(err)
	}
	if n := len(fake.Signals()); n != 1 {
		t.Fatalf("%d signals after AccessDenied, want 1", n)
	}
}
