package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/cfnsignal"
)

// cmdCFNSignal is run by the stack's user data after `systemctl start
// gwlbproxy` (which, for a Type=notify unit, returns once the daemon is
// READY, or fails): it waits for health to answer 200 and sends SUCCESS, or
// sends FAILURE, so CloudFormation's CreationPolicy / rolling update with
// WaitOnResourceSignals can roll back a bad image or config.
func cmdCFNSignal(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("cfn-signal", "cfn-signal --stack NAME --resource LOGICAL_ID [--status success|failure] [--wait-healthy URL] [flags]", stderr)
	stack := fs.String("stack", "", "stack name or id (required)")
	resource := fs.String("resource", "", "logical id of the resource with the CreationPolicy/UpdatePolicy (required)")
	status := fs.String("status", "success", "success or failure")
	healthURL := fs.String("wait-healthy", "", "with success: first wait until this URL answers 200, else send failure")
	healthTimeout := fs.Duration("health-timeout", 3*time.Minute, "how long --wait-healthy waits")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to keep retrying SignalResource")
	region := fs.String("region", "", "region (default: from IMDS)")
	instanceID := fs.String("instance-id", "", "unique id of the signal (default: the instance id from IMDS)")
	endpoint := fs.String("endpoint", "", "CloudFormation endpoint URL (default: the regional one)")
	imdsEndpoint := fs.String("imds-endpoint", "", "instance metadata endpoint URL (tests)")
	dryRun := fs.Bool("dry-run", false, "validate the flags and print the signal without waiting or sending")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var missing []string
	if *stack == "" {
		missing = append(missing, "--stack")
	}
	if *resource == "" {
		missing = append(missing, "--resource")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s required", strings.Join(missing, " and "))
	}
	var success bool
	switch strings.ToLower(*status) {
	case "success":
		success = true
	case "failure":
	default:
		return fmt.Errorf("--status: %q is not success or failure", *status)
	}
	sig := cfnsignal.Signal{Stack: *stack, Resource: *resource, UniqueID: *instanceID, Success: success}
	if *dryRun {
		fmt.Fprintf(stdout, "would signal %s to %s/%s (unique id %q, region %q, wait-healthy %q)\n",
			sig.Status(), sig.Stack, sig.Resource, sig.UniqueID, *region, *healthURL)
		return nil
	}

	log := slog.New(slog.NewTextHandler(stderr, nil))
	if sig.UniqueID == "" || *region == "" {
		id, r, err := cfnsignal.Identity(ctx, *imdsEndpoint)
		if err != nil {
			return err
		}
		if sig.UniqueID == "" {
			sig.UniqueID = id
		}
		if *region == "" {
			*region = r
		}
	}
	if sig.Success && *healthURL != "" {
		hctx, cancel := context.WithTimeout(ctx, *healthTimeout)
		err := cfnsignal.WaitHealthy(hctx, *healthURL, 2*time.Second)
		cancel()
		if err != nil {
			log.Error("cfnsignal: appliance not healthy; signalling FAILURE", "err", err)
			sig.Success = false
		}
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(*region))
	if err != nil {
		return fmt.Errorf("aws config: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := cfnsignal.Send(sctx, cfnsignal.NewClient(awsCfg, *endpoint), sig, log); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signalled %s to %s/%s as %s\n", sig.Status(), sig.Stack, sig.Resource, sig.UniqueID)
	if !sig.Success && success {
		return errors.New("appliance not healthy: signalled FAILURE")
	}
	return nil
}
