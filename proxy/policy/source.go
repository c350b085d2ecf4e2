package policy

import (
	"fmt"
	"strings"
	"time"
)

// Policy sources (SourceConfig.Source).
const (
	// SourceFile: the rules are the ones in the configuration file, read
	// again on SIGHUP (systemctl reload).
	SourceFile = "file"
	// SourceS3: one S3 object holds the policy document, polled with
	// If-None-Match on its ETag.
	SourceS3 = "s3"
	// SourceSSM: one SSM Parameter Store parameter holds it, polled by
	// version. Standard parameters hold 4 KB, advanced 8 KB: larger
	// policies belong in S3.
	SourceSSM = "ssm"
)

// SourceConfig says where the policy comes from. It sits inline in the
// policy section (proxy.policy.source, proxy.policy.s3, ...). With s3 or
// ssm the document fetched holds the policy keys (rules, default_action,
// no_sni_action, ech_action, report_only) and replaces those of the file.
type SourceConfig struct {
	// Source is file (default), s3 or ssm.
	Source string `yaml:"source"`
	// S3 names the object (source s3).
	S3 S3Source `yaml:"s3"`
	// SSM names the parameter (source ssm).
	SSM SSMSource `yaml:"ssm"`
	// PollInterval is how often s3/ssm are asked for a newer version:
	// every instance enforces a change within one interval.
	PollInterval time.Duration `yaml:"poll_interval"`
	// LastGood is where the last valid fetched document is kept, so a
	// cold start with the source unreachable enforces it (without one:
	// deny everything until the source answers).
	LastGood string `yaml:"last_good"`
	// Region of the bucket or parameter; empty: the instance's (IMDS).
	Region string `yaml:"region"`
	// The S3/SSM endpoint override is aws.endpoints.s3 / .ssm (issue 17;
	// proxy.policy.endpoint is read as a deprecated alias of it).
}

// S3Source is proxy.policy.s3.
type S3Source struct {
	Bucket string `yaml:"bucket"`
	Key    string `yaml:"key"`
}

// SSMSource is proxy.policy.ssm.
type SSMSource struct {
	// Parameter is the parameter's name ("/gwlbproxy/policy").
	Parameter string `yaml:"parameter"`
}

// DefaultSourceConfig is the file source with the remote sources'
// defaults filled in.
func DefaultSourceConfig() SourceConfig {
	return SourceConfig{Source: SourceFile, PollInterval: time.Minute, LastGood: "/var/lib/gwlbproxy/policy-last-good.json"}
}

// Validate checks c; messages start with the yaml key.
func (c *SourceConfig) Validate() error {
	switch c.Source {
	case SourceFile, "":
		return nil
	case SourceS3:
		if c.S3.Bucket == "" {
			return fmt.Errorf("s3.bucket: required with source s3")
		}
		if c.S3.Key == "" || strings.HasPrefix(c.S3.Key, "/") {
			return fmt.Errorf("s3.key: %q: required with source s3, without a leading /", c.S3.Key)
		}
	case SourceSSM:
		if c.SSM.Parameter == "" {
			return fmt.Errorf("ssm.parameter: required with source ssm")
		}
	default:
		return fmt.Errorf("source: %q is not file, s3 or ssm", c.Source)
	}
	if c.PollInterval < 5*time.Second || c.PollInterval > 24*time.Hour {
		return fmt.Errorf("poll_interval: %v out of range 5s..24h", c.PollInterval)
	}
	if c.LastGood == "" || !strings.HasPrefix(c.LastGood, "/") {
		return fmt.Errorf("last_good: %q: an absolute path is required with source %s", c.LastGood, c.Source)
	}
	return nil
}
