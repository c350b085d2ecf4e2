package config

import (
	"strings"
	"testing"
)

// TestAWSSection: the aws: section decodes strictly and bad values get
// one line naming the key.
func TestAWSSection(t *testing.T) {
	c, err := Parse([]byte("aws:\n  region: eu-west-1\n  imds_endpoint: http://198.18.0.9:8080\n  endpoints:\n    logs: http://198.18.0.1:4566\n    s3: https://bucket.vpce-0abc.s3.eu-west-1.vpce.amazonaws.com\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.AWS.Region != "eu-west-1" || c.AWS.IMDS != "enabled" || c.AWS.IMDSEndpoint != "http://198.18.0.9:8080" ||
		c.AWS.Endpoints.Logs != "http://198.18.0.1:4566" || c.AWS.Endpoints.S3 == "" || len(c.Warnings) != 0 {
		t.Fatalf("aws = %+v, warnings %q", c.AWS, c.Warnings)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"aws:\n  region: Europe\n", `aws.region: "Europe" is not an AWS region name`},
		{"aws:\n  imds: off\n", `aws.imds: "off" is not enabled or disabled`},
		{"aws:\n  imds: disabled\n  imds_endpoint: http://198.18.0.9\n", "aws.imds_endpoint: set while imds is disabled"},
		{"aws:\n  imds_endpoint: 169.254.169.254\n", "aws.imds_endpoint: "},
		{"aws:\n  endpoints:\n    logs: ftp://x\n", "aws.endpoints.logs: \"ftp://x\": scheme must be http or https"},
		{"aws:\n  endpoints:\n    dynamodb: http://x\n", "aws.endpoints.dynamodb (line 3): unknown key"},
		{"aws:\n  endpoint: http://x\n", "aws.endpoint (line 2): unknown key"},
		{"aws:\n  endpoints: http://x\n", "aws.endpoints (line 2): expected a mapping"},
		{"aws:\n  endpoints:\n    ec2: [a]\n", "aws.endpoints.ec2 (line 3): expected a single value"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: got %v, want one line containing %q", tc.yaml, err, tc.want)
		}
	}
}

// TestAWSDeprecatedAliases: the keys components used to carry move into
// the aws section with one warning line; conflicting values are an error
// naming the alias.
func TestAWSDeprecatedAliases(t *testing.T) {
	doc := `
logship:
  cloudwatch:
    imds_endpoint: http://198.18.0.9:8080
    endpoint: http://198.18.0.1:4566
steer:
  ec2_endpoint: http://198.18.0.2:4567
  imds_endpoint: http://198.18.0.9:8080
lifecycle:
  imds_endpoint: ""
  autoscaling_endpoint: http://198.18.0.3:4568
proxy:
  policy:
    source: ssm
    ssm:
      parameter: /gwlbproxy/policy
    endpoint: http://198.18.0.4:4569
`
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	a := c.AWS
	if a.IMDSEndpoint != "http://198.18.0.9:8080" || a.Endpoints.Logs != "http://198.18.0.1:4566" || a.Endpoints.EC2 != "http://198.18.0.2:4567" ||
		a.Endpoints.AutoScaling != "http://198.18.0.3:4568" || a.Endpoints.SSM != "http://198.18.0.4:4569" || a.Endpoints.S3 != "" {
		t.Fatalf("aws = %+v", a)
	}
	if len(c.Warnings) != 1 || strings.Contains(c.Warnings[0], "\n") {
		t.Fatalf("warnings %q, want one line", c.Warnings)
	}
	for _, k := range []string{"logship.cloudwatch.imds_endpoint -> aws.imds_endpoint", "steer.ec2_endpoint -> aws.endpoints.ec2",
		"lifecycle.imds_endpoint", "proxy.policy.endpoint -> aws.endpoints.ssm", "lifecycle.autoscaling_endpoint -> aws.endpoints.autoscaling"} {
		if !strings.Contains(c.Warnings[0], k) {
			t.Errorf("warning %q does not mention %q", c.Warnings[0], k)
		}
	}
	// The effective config (check, the demo's generated files) carries
	// only the new keys: it parses again without warnings.
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(out)
	if err != nil || len(c2.Warnings) != 0 || c2.AWS != c.AWS {
		t.Fatalf("round trip: %v, warnings %q, aws %+v", err, c2.Warnings, c2.AWS)
	}

	for _, tc := range []struct{ yaml, want string }{
		{"steer:\n  imds_endpoint: http://198.18.0.9\nlifecycle:\n  imds_endpoint: http://198.18.0.8\n",
			`lifecycle.imds_endpoint (line 4): deprecated alias of aws.imds_endpoint, which steer.imds_endpoint already set to "http://198.18.0.9"`},
		{"aws:\n  endpoints:\n    logs: http://198.18.0.1\nlogship:\n  cloudwatch:\n    endpoint: http://198.18.0.2\n",
			`logship.cloudwatch.endpoint (line 6): deprecated alias of aws.endpoints.logs, which is set to "http://198.18.0.1"`},
		{"steer:\n  ec2_endpoint: ftp://x\n", `steer.ec2_endpoint (line 2): "ftp://x": scheme must be http or https`},
		{"steer:\n  ec2_endpoint: [x]\n", "steer.ec2_endpoint (line 2): expected a URL string"},
		{"lifecycle:\n  imds_endpoint: a\n  imds_endpoint: b\n", "lifecycle.imds_endpoint (line 3): duplicate key"},
		{"aws:\n  imds: disabled\nsteer:\n  imds_endpoint: http://198.18.0.9\n", "aws.imds_endpoint: set while imds is disabled"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: got %v, want one line containing %q", tc.yaml, err, tc.want)
		}
	}
	// Same value twice is fine (operators often set all three the same).
	if c, err := Parse([]byte("steer:\n  imds_endpoint: http://198.18.0.9\nlifecycle:\n  imds_endpoint: http://198.18.0.9\n")); err != nil || c.AWS.IMDSEndpoint != "http://198.18.0.9" {
		t.Fatalf("same value twice: %v %+v", err, c.AWS)
	}
}
