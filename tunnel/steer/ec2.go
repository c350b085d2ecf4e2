//go:build linux

package steer

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// AWSEnv is what disable_source_dest_check needs of the appliance's one
// AWS environment (cmd/internal/awsenv builds it once and the application
// hands it over with SetAWS): the instance's id from IMDSv2 and the SDK
// configuration for EC2 (region, credentials, aws.endpoints.ec2).
type AWSEnv interface {
	InstanceID(ctx context.Context) (string, error)
	Config(ctx context.Context, service string) (aws.Config, error)
}

// SetAWS gives steer the AWS environment disable_source_dest_check uses.
// Call it before Start; with the key on and no environment Start fails.
func (s *Steerer) SetAWS(env AWSEnv) { s.aws = env }

// EC2API is the part of the EC2 client we use.
type EC2API interface {
	ModifyInstanceAttribute(ctx context.Context, in *ec2.ModifyInstanceAttributeInput, optFns ...func(*ec2.Options)) (*ec2.ModifyInstanceAttributeOutput, error)
}

// DisableSourceDestCheck turns the EC2 source/destination check OFF
// (SourceDestCheck=false, i.e. the instance may forward packets that are
// neither from nor to its own addresses) on instance instanceID.
//
// Only un-NATed forwarding out of the instance's own NIC needs this: GENEVE
// from GWLB is addressed to the instance (one-arm needs nothing), and nat
// mode masquerades, so what leaves the NIC has the instance's source.
func DisableSourceDestCheck(ctx context.Context, instanceID string, api EC2API) error {
	_, err := api.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{
		InstanceId:      aws.String(instanceID),
		SourceDestCheck: &ec2types.AttributeBooleanValue{Value: aws.Bool(false)},
	})
	if err != nil {
		return fmt.Errorf("ec2 ModifyInstanceAttribute %s SourceDestCheck=false: %w", instanceID, err)
	}
	return nil
}

// disableSourceDestCheck calls DisableSourceDestCheck with the instance
// id and an EC2 client from the AWS environment given to SetAWS.
func (s *Steerer) disableSourceDestCheck(ctx context.Context) error {
	if s.aws == nil {
		return errors.New("no AWS environment (the application must call SetAWS)")
	}
	id, err := s.aws.InstanceID(ctx)
	if err != nil {
		return err
	}
	acfg, err := s.aws.Config(ctx, "ec2")
	if err != nil {
		return err
	}
	if err := DisableSourceDestCheck(ctx, id, ec2.NewFromConfig(acfg)); err != nil {
		return err
	}
	s.log.Info("source/destination check disabled", "instance", id)
	return nil
}
