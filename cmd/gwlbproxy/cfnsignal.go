package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/cfnsignal"
	"github.com/gwlbproxy/gwlbproxy/cmd/internal/config"
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
	cfgPath := fs.String("config", config.DefaultPath, "appliance config whose aws section (region, imds, endpoints) applies; the flags below win; an unreadable or invalid file is ignored with a warning, so a FAILURE still gets out")
	region := fs.String("region", "", "region (default: aws.region, else AWS_REGION, else from IMDS)")
	instanceID := fs.String("instance-id", "", "unique id of the signal (default: the instance id from IMDS)")
	endpoint := fs.String("endpoint", "", "CloudFormation endpoint URL (default: aws.endpoints.cloudformation, else the regional one)")
	imdsEndpoint := fs.String("imds-endpoint", "", "instance metadata endpoint URL (default: aws.imds_endpoint; tests)")
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
	// issue 17: the appliance's AWS environment (its config's aws section,
	// the flags on top), so a VPC endpoint or metadata override set for
	// the daemon applies to the signal too.
	acfg := awsenv.DefaultConfig()
	if c, err := config.Load(*cfgPath, *cfgPath == config.DefaultPath); err != nil {
		log.Warn("cfnsignal: config not usable; the AWS environment comes from the flags and defaults", "err", err)
	} else {
		acfg = c.AWS
	}
	if *region != "" {
		acfg.Region = *region
	}
	if *imdsEndpoint != "" {
		acfg.IMDSEndpoint = *imdsEndpoint
	}
	if *endpoint != "" {
		acfg.Endpoints.CloudFormation = *endpoint
	}
	env, err := awsenv.New(acfg, log)
	if err != nil {
		return fmt.Errorf("--region/--endpoint/--imds-endpoint: %w", err)
	}
	if sig.UniqueID == "" {
		// A freshly booted instance: give IMDS a few tries.
		ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
		for {
			id, err := env.InstanceID(ictx)
			if err == nil {
				sig.UniqueID = id
				break
			}
			if ictx.Err() != nil {
				cancel()
				return fmt.Errorf("cfnsignal: %w", err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		cancel()
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
	awsCfg, err := env.Config(ctx, awsenv.CloudFormation)
	if err != nil {
		return fmt.Errorf("cfnsignal: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := cfnsignal.Send(sctx, cfnsignal.NewClient(awsCfg), sig, log); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signalled %s to %s/%s as %s\n", sig.Status(), sig.Stack, sig.Resource, sig.UniqueID)
	if !sig.Success && success {
		return errors.New("appliance not healthy: signalled FAILURE")
	}
	return nil
}
