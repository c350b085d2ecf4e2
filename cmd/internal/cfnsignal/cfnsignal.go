// Package cfnsignal tells CloudFormation whether a freshly launched
// appliance came up, so an Auto Scaling group with a CreationPolicy or an
// AutoScalingRollingUpdate with WaitOnResourceSignals rolls back a bad AMI
// or config instead of replacing the whole fleet with broken instances.
//
// It does what cfn-signal (aws-cfn-bootstrap, not on Ubuntu images) does,
// with the SDK the appliance already carries: the instance id from IMDSv2
// (cmd/internal/awsenv),
// the instance role's credentials, one cloudformation:SignalResource call,
// retried while the network, the role or a VPC endpoint is still settling.
package cfnsignal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudformation"
	"github.com/aws/aws-sdk-go-v2/service/cloudformation/types"
	"github.com/aws/smithy-go"
)

// API is the one call this package makes.
type API interface {
	SignalResource(ctx context.Context, in *cloudformation.SignalResourceInput, optFns ...func(*cloudformation.Options)) (*cloudformation.SignalResourceOutput, error)
}

// Signal is what is sent.
type Signal struct {
	Stack    string // stack name or id
	Resource string // logical id of the resource with the policy
	UniqueID string // the instance id: one signal per instance counts
	Success  bool
}

// Status returns the wire value of s's status.
func (s Signal) Status() types.ResourceSignalStatus {
	if s.Success {
		return types.ResourceSignalStatusSuccess
	}
	return types.ResourceSignalStatusFailure
}

// ErrNotSignalable marks a refusal that retrying cannot change: typically
// the resource is not waiting for signals (an instance launched by a
// scale-out, not by a stack create or update).
var ErrNotSignalable = errors.New("cfnsignal: CloudFormation refused the signal")

// NewClient builds the CloudFormation client from the AWS environment's
// configuration for it (aws.endpoints.cloudformation, a VPC endpoint's
// DNS name or a test fake, is its BaseEndpoint).
func NewClient(awsCfg aws.Config) *cloudformation.Client {
	return cloudformation.NewFromConfig(awsCfg)
}

// Send sends sig, retrying with backoff until ctx ends. A ValidationError
// is final (ErrNotSignalable); everything else (no route yet, the role not
// yet usable, throttling, 5xx) is retried, since an instance that never
// signals costs the whole update its timeout.
func Send(ctx context.Context, api API, sig Signal, log *slog.Logger) error {
	in := &cloudformation.SignalResourceInput{
		StackName:         aws.String(sig.Stack),
		LogicalResourceId: aws.String(sig.Resource),
		UniqueId:          aws.String(sig.UniqueID),
		Status:            sig.Status(),
	}
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		_, err := api.SignalResource(ctx, in)
		if err == nil {
			log.Info("cfnsignal: signal sent", "stack", sig.Stack, "resource", sig.Resource, "unique_id", sig.UniqueID, "status", sig.Status(), "attempts", attempt)
			return nil
		}
		var ae smithy.APIError
		if errors.As(err, &ae) && ae.ErrorCode() == "ValidationError" {
			return fmt.Errorf("%w: %s", ErrNotSignalable, ae.ErrorMessage())
		}
		log.Warn("cfnsignal: SignalResource failed; retrying", "attempt", attempt, "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("cfnsignal: gave up after %d attempts: %w", attempt, err)
		case <-t.C:
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// WaitHealthy polls url until it answers 200 or ctx ends; it returns the
// last status or error seen. The appliance's health answers 200 only when
// every component (tunnels, rules, proxy, CA, shipper) is healthy.
func WaitHealthy(ctx context.Context, url string, every time.Duration) error {
	client := &http.Client{Timeout: 5 * time.Second}
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("cfnsignal: health URL: %w", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("health %s answered %s", url, resp.Status)
		}
		last = err
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("cfnsignal: not healthy in time: %w", last)
		case <-t.C:
		}
	}
}
