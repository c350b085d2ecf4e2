//go:build linux

package steer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// IMDSAPI is the part of the IMDS client we use.
type IMDSAPI interface {
	GetMetadata(ctx context.Context, in *imds.GetMetadataInput, optFns ...func(*imds.Options)) (*imds.GetMetadataOutput, error)
}

// EC2API is the part of the EC2 client we use.
type EC2API interface {
	ModifyInstanceAttribute(ctx context.Context, in *ec2.ModifyInstanceAttributeInput, optFns ...func(*ec2.Options)) (*ec2.ModifyInstanceAttributeOutput, error)
}

func metadata(ctx context.Context, c IMDSAPI, path string) (string, error) {
	out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", fmt.Errorf("imds %s: %w", path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 4096))
	if err != nil {
		return "", fmt.Errorf("imds %s: %w", path, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("imds %s: empty", path)
	}
	return v, nil
}

// DisableSourceDestCheck turns the EC2 source/destination check OFF
// (SourceDestCheck=false, i.e. the instance may forward packets that are
// neither from nor to its own addresses) on the instance IMDS names.
//
// Only un-NATed forwarding out of the instance's own NIC needs this: GENEVE
// from GWLB is addressed to the instance (one-arm needs nothing), and nat
// mode masquerades, so what leaves the NIC has the instance's source.
func DisableSourceDestCheck(ctx context.Context, md IMDSAPI, api EC2API) (instanceID string, err error) {
	id, err := metadata(ctx, md, "instance-id")
	if err != nil {
		return "", err
	}
	_, err = api.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{
		InstanceId:      aws.String(id),
		SourceDestCheck: &ec2types.AttributeBooleanValue{Value: aws.Bool(false)},
	})
	if err != nil {
		return id, fmt.Errorf("ec2 ModifyInstanceAttribute %s SourceDestCheck=false: %w", id, err)
	}
	return id, nil
}

// disableSourceDestCheckDefault builds real SDK clients (IMDSv2 only, no
// fallback to v1; region from IMDS) and calls DisableSourceDestCheck.
func disableSourceDestCheckDefault(ctx context.Context, cfg Config, log *slog.Logger) error {
	md := imds.New(imds.Options{Endpoint: cfg.IMDSEndpoint, EnableFallback: aws.FalseTernary})
	region, err := metadata(ctx, md, "placement/region")
	if err != nil {
		return err
	}
	acfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(region))
	if err != nil {
		return fmt.Errorf("aws config: %w", err)
	}
	api := ec2.NewFromConfig(acfg, func(o *ec2.Options) {
		if cfg.EC2Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.EC2Endpoint)
		}
	})
	id, err := DisableSourceDestCheck(ctx, md, api)
	if err != nil {
		return err
	}
	log.Info("source/destination check disabled", "instance", id)
	return nil
}
