package awsenv

import (
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"regexp"
	"strings"
)

// IMDS states (aws.imds).
const (
	IMDSEnabled  = "enabled"
	IMDSDisabled = "disabled"
)

// Service names: the keys of aws.endpoints and what consumers pass to
// Env.Config. Plain strings so that a consumer's own interface
// (Config(ctx, string)) is satisfied without importing this package.
const (
	Logs           = "logs"           // CloudWatch Logs (logship)
	EC2            = "ec2"            // steer.disable_source_dest_check
	AutoScaling    = "autoscaling"    // lifecycle
	CloudFormation = "cloudformation" // gwlbproxy cfn-signal
	S3             = "s3"             // proxy.policy.source s3
	SSM            = "ssm"            // proxy.policy.source ssm
	KMS            = "kms"            // ca source kms, ca init --kms
	SecretsManager = "secretsmanager" // ca source secretsmanager
)

// Config is the top-level `aws:` section: the one place for the region,
// instance metadata and service endpoint overrides of every AWS client
// the appliance uses.
type Config struct {
	// Region of every client. Empty: AWS_REGION or the shared config's
	// profile, else the instance's region from IMDS.
	Region string `yaml:"region"`
	// IMDS is "enabled" (default) or "disabled". Disabled: nothing asks
	// the instance metadata service (no instance id, region or instance
	// role credentials from it); for hosts outside EC2.
	IMDS string `yaml:"imds"`
	// IMDSEndpoint overrides the metadata service's address
	// (http://169.254.169.254 by default; tests point it at a fake).
	IMDSEndpoint string `yaml:"imds_endpoint"`
	// Endpoints override one service's endpoint each: VPC interface
	// endpoints without private DNS, and local fakes in tests.
	Endpoints Endpoints `yaml:"endpoints"`
}

// Endpoints are per-service endpoint URLs; empty means the SDK's regional
// endpoint (which resolves to an interface VPC endpoint with private DNS).
type Endpoints struct {
	Logs           string `yaml:"logs"`
	EC2            string `yaml:"ec2"`
	AutoScaling    string `yaml:"autoscaling"`
	CloudFormation string `yaml:"cloudformation"`
	S3             string `yaml:"s3"`
	SSM            string `yaml:"ssm"`
	KMS            string `yaml:"kms"`
	SecretsManager string `yaml:"secretsmanager"`
}

// DefaultConfig returns every default.
func DefaultConfig() Config {
	return Config{IMDS: IMDSEnabled}
}

// endpointField maps each service name to its Endpoints field (by yaml
// tag, so the two cannot drift apart).
var endpointField = func() map[string]int {
	m := map[string]int{}
	t := reflect.TypeFor[Endpoints]()
	for i := range t.NumField() {
		m[t.Field(i).Tag.Get("yaml")] = i
	}
	return m
}()

// Known reports whether service is a key of aws.endpoints.
func Known(service string) bool {
	_, ok := endpointField[service]
	return ok
}

// For returns service's override ("" when none or unknown).
func (e Endpoints) For(service string) string {
	i, ok := endpointField[service]
	if !ok {
		return ""
	}
	return reflect.ValueOf(e).Field(i).String()
}

// Set sets service's override; it panics on an unknown service (a
// programming error: the names are the constants above).
func (e *Endpoints) Set(service, url string) {
	i, ok := endpointField[service]
	if !ok {
		panic("awsenv: unknown service " + service)
	}
	reflect.ValueOf(e).Elem().Field(i).SetString(url)
}

// Overrides lists the services with an endpoint override, in field order.
func (e Endpoints) Overrides() [][2]string {
	var out [][2]string
	v := reflect.ValueOf(e)
	t := v.Type()
	for i := range t.NumField() {
		if s := v.Field(i).String(); s != "" {
			out = append(out, [2]string{t.Field(i).Tag.Get("yaml"), s})
		}
	}
	return out
}

// regionRE is an AWS region name: us-east-1, eu-central-2, us-gov-west-1,
// cn-northwest-1, ap-southeast-4, il-central-1.
var regionRE = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`)

// Validate checks c; messages start with the key relative to the section
// (the config package prefixes "aws.").
func (c *Config) Validate() error {
	if c.Region != "" && !regionRE.MatchString(c.Region) {
		return fmt.Errorf("region: %q is not an AWS region name (like eu-west-1)", c.Region)
	}
	switch c.IMDS {
	case IMDSEnabled, IMDSDisabled:
	case "":
		c.IMDS = IMDSEnabled
	default:
		return fmt.Errorf("imds: %q is not enabled or disabled", c.IMDS)
	}
	if c.IMDSEndpoint != "" {
		if c.IMDS == IMDSDisabled {
			return errors.New("imds_endpoint: set while imds is disabled")
		}
		if err := CheckURL(c.IMDSEndpoint); err != nil {
			return fmt.Errorf("imds_endpoint: %w", err)
		}
	}
	for _, o := range c.Endpoints.Overrides() {
		if err := CheckURL(o[1]); err != nil {
			return fmt.Errorf("endpoints.%s: %w", o[0], err)
		}
	}
	return nil
}

// CheckURL accepts an absolute http or https URL with a host and nothing
// after the path (the SDK appends the operation's path to it).
func CheckURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q: scheme must be http or https", s)
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("%q has no host", s)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(s, " \t\r\n") {
		return fmt.Errorf("%q: no user info, query, fragment or spaces allowed", s)
	}
	return nil
}

// Use is one consumer of the environment: the service it calls and the
// configuration key that turned it on.
type Use struct {
	Service string // a service constant
	By      string // e.g. "logship.sink cloudwatch"
}

// Explain describes, for `gwlbproxy check --explain`, what the section
// means for a configuration whose AWS consumers are uses: where the region
// and credentials come from, whether IMDS is asked and for what, and the
// endpoint each consumer reaches. askIDFromIMDS is whether the instance id
// comes from IMDS (instance_id empty).
func (c Config) Explain(uses []Use, askIDFromIMDS bool) string {
	var b strings.Builder
	imdsOn := c.IMDS != IMDSDisabled
	if len(uses) == 0 {
		b.WriteString("no AWS service is called with this configuration; the SDK configuration is never loaded\n")
	}
	switch {
	case c.Region != "":
		fmt.Fprintf(&b, "region: %s (aws.region)\n", c.Region)
	case imdsOn:
		b.WriteString("region: AWS_REGION or the shared config profile's, else the instance's from IMDS (placement/region)\n")
	default:
		b.WriteString("region: AWS_REGION or the shared config profile's; none is an error at the first AWS call (aws.imds is disabled)\n")
	}
	b.WriteString("credentials: the SDK's default chain (environment, shared config/credentials files, web identity, container, ")
	if imdsOn {
		b.WriteString("the instance role through IMDS)\n")
	} else {
		b.WriteString("no instance role: aws.imds is disabled)\n")
	}
	if imdsOn {
		ep := c.IMDSEndpoint
		if ep == "" {
			ep = "http://169.254.169.254"
		}
		var what []string
		if askIDFromIMDS {
			what = append(what, "instance id (else the host name)")
		}
		for _, u := range uses {
			if u.Service == AutoScaling {
				what = append(what, "target lifecycle state and group tag (lifecycle)")
			}
		}
		if len(what) == 0 {
			what = append(what, "nothing unless the region or credentials need it")
		}
		fmt.Fprintf(&b, "imds: IMDSv2 only (session token, no v1 fallback) at %s: %s\n", ep, strings.Join(what, ", "))
	} else {
		b.WriteString("imds: disabled; nothing asks the instance metadata service\n")
	}
	for _, u := range uses {
		ep := c.Endpoints.For(u.Service)
		if ep == "" {
			ep = "regional endpoint"
		}
		fmt.Fprintf(&b, "%s (%s): %s\n", u.Service, u.By, ep)
	}
	return b.String()
}
