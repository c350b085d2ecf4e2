// Package lifecycle makes the appliance a good Auto Scaling group member at
// scale-in: it notices from instance metadata that the instance is being
// terminated, lets the appliance drain (health 503 so GWLB sends no new
// flows, in-flight flows and the log spool finished), and then completes
// the termination lifecycle hook so the instance goes away only after that.
//
// It polls IMDSv2's autoscaling/target-lifecycle-state rather than waiting
// for EventBridge or SQS: nothing else to deploy, and the instance already
// talks to IMDS.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
)

// Config is the `lifecycle:` section.
type Config struct {
	// Enabled turns the watcher on (the CloudFormation stack does).
	Enabled bool `yaml:"enabled"`
	// HookName is the ASG's termination lifecycle hook.
	HookName string `yaml:"hook_name"`
	// GroupName is the Auto Scaling group. Empty: read from the instance's
	// tags in IMDS (aws:autoscaling:groupName; needs instance metadata tags).
	GroupName string `yaml:"group_name"`
	// PollInterval is how often IMDS is asked.
	PollInterval time.Duration `yaml:"poll_interval"`
	// The IMDS and Auto Scaling endpoints are the appliance's
	// (aws.imds_endpoint, aws.endpoints.autoscaling; issue 17).
}

// DefaultConfig returns every default.
func DefaultConfig() Config {
	return Config{HookName: "gwlbproxy-drain", PollInterval: 5 * time.Second}
}

// Validate checks c; messages start with the yaml key.
func (c *Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	if c.HookName == "" {
		return errors.New("hook_name: required when enabled")
	}
	if c.PollInterval < time.Second || c.PollInterval > 5*time.Minute {
		return fmt.Errorf("poll_interval: %s out of range 1s..5m", c.PollInterval)
	}
	return nil
}

// AutoScalingAPI is the one call this package makes.
type AutoScalingAPI interface {
	CompleteLifecycleAction(ctx context.Context, in *autoscaling.CompleteLifecycleActionInput, optFns ...func(*autoscaling.Options)) (*autoscaling.CompleteLifecycleActionOutput, error)
}

// Metadata reads one instance metadata path. *awsenv.Env implements it:
// the appliance's one IMDSv2 client (and session token).
type Metadata interface {
	Metadata(ctx context.Context, path string) (string, error)
}

// Watcher follows the instance's lifecycle state.
type Watcher struct {
	cfg   Config
	md    Metadata
	api   AutoScalingAPI
	log   *slog.Logger
	group string
}

// New returns a watcher reading md and completing the hook with api.
func New(cfg Config, md Metadata, api AutoScalingAPI, log *slog.Logger) *Watcher {
	return &Watcher{cfg: cfg, md: md, api: api, log: log}
}

// NewClient builds the Auto Scaling client from the AWS environment's
// configuration for it (endpoint override included).
func NewClient(awsCfg aws.Config) *autoscaling.Client {
	return autoscaling.NewFromConfig(awsCfg)
}

func (w *Watcher) metadata(ctx context.Context, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return w.md.Metadata(ctx, path)
}

// Wait returns nil when the instance's target lifecycle state becomes
// Terminated (scale-in has begun), or ctx's error. Polling errors are
// logged and retried: a flaky IMDS must not drain a healthy instance.
func (w *Watcher) Wait(ctx context.Context) error {
	t := time.NewTicker(w.cfg.PollInterval)
	defer t.Stop()
	var lastErr string
	for {
		state, err := w.metadata(ctx, "autoscaling/target-lifecycle-state")
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err.Error() != lastErr {
				w.log.Warn("lifecycle: IMDS poll failed", "err", err)
				lastErr = err.Error()
			}
		case state == "Terminated":
			w.log.Info("lifecycle: instance is being terminated; draining")
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Complete tells the Auto Scaling group the instance has drained
// (CompleteLifecycleAction, CONTINUE).
func (w *Watcher) Complete(ctx context.Context, instanceID string) error {
	group := w.cfg.GroupName
	if group == "" {
		g, err := w.metadata(ctx, "tags/instance/aws:autoscaling:groupName")
		if err != nil {
			return fmt.Errorf("lifecycle: group name from IMDS tags: %w (set lifecycle.group_name or enable instance metadata tags)", err)
		}
		group = g
	}
	_, err := w.api.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName:  aws.String(group),
		LifecycleHookName:     aws.String(w.cfg.HookName),
		LifecycleActionResult: aws.String("CONTINUE"),
		InstanceId:            aws.String(instanceID),
	})
	if err != nil {
		return fmt.Errorf("lifecycle: complete %s/%s: %w", group, w.cfg.HookName, err)
	}
	w.log.Info("lifecycle: termination hook completed", "group", group, "hook", w.cfg.HookName)
	return nil
}
