package config

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/gwlbproxy/gwlbproxy/cmd/internal/awsenv"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// issue 17: the AWS endpoint and metadata keys that components used to
// carry each for themselves, now deprecated aliases of the one `aws:`
// section. Operators' files keep working: the value moves to its new key
// and Parse reports one warning line (Config.Warnings) naming the keys to
// move. Two aliases (or an alias and the new key) with different values
// are an error naming the alias, since one of them would be ignored.
var awsAliases = []struct {
	old []string // key path
	new string   // aws.* key, "" when it depends on the policy source
}{
	{[]string{"logship", "cloudwatch", "imds_endpoint"}, "aws.imds_endpoint"},
	{[]string{"steer", "imds_endpoint"}, "aws.imds_endpoint"},
	{[]string{"lifecycle", "imds_endpoint"}, "aws.imds_endpoint"},
	{[]string{"logship", "cloudwatch", "endpoint"}, "aws.endpoints.logs"},
	{[]string{"steer", "ec2_endpoint"}, "aws.endpoints.ec2"},
	{[]string{"lifecycle", "autoscaling_endpoint"}, "aws.endpoints.autoscaling"},
	// aws.endpoints.s3 or .ssm, after proxy.policy.source is known.
	{[]string{"proxy", "policy", "endpoint"}, ""},
}

// movedKey is a deprecated key taken out of the document.
type movedKey struct {
	old, new string
	value    string
	line     int
}

// extractAWSAliases removes the deprecated keys from the document's node
// tree (so the strict decoder does not see them) and returns them.
func extractAWSAliases(root *yaml.Node) ([]movedKey, error) {
	var out []movedKey
	for _, a := range awsAliases {
		n := root
		for _, k := range a.old[:len(a.old)-1] {
			n = child(n, k)
			if n == nil {
				break
			}
		}
		if n == nil {
			continue
		}
		if n.Kind == yaml.AliasNode {
			n = n.Alias
		}
		if n.Kind != yaml.MappingNode {
			continue // the strict decoder reports it
		}
		last := a.old[len(a.old)-1]
		path := strings.Join(a.old, ".")
		found := -1
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value != last {
				continue
			}
			if found >= 0 {
				return nil, &FieldError{path, n.Content[i].Line, "duplicate key"}
			}
			found = i
		}
		if found < 0 {
			continue
		}
		k, v := n.Content[found], n.Content[found+1]
		if v.Kind == yaml.AliasNode {
			v = v.Alias
		}
		m := movedKey{old: path, new: a.new, line: k.Line}
		switch {
		case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
		case v.Kind == yaml.ScalarNode && (v.Tag == "!!str" || v.Tag == ""):
			m.value = v.Value
		default:
			return nil, &FieldError{path, v.Line, "expected a URL string"}
		}
		n.Content = append(n.Content[:found:found], n.Content[found+2:]...)
		out = append(out, m)
	}
	return out, nil
}

func child(n *yaml.Node, key string) *yaml.Node {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// applyAWSAliases moves the extracted values into c.AWS and returns the
// warning line, or "" when no deprecated key was used.
func (c *Config) applyAWSAliases(moved []movedKey) (string, error) {
	if len(moved) == 0 {
		return "", nil
	}
	from := map[string]string{} // new key -> alias that set it
	var names []string
	for _, m := range moved {
		if m.new == "" { // proxy.policy.endpoint
			switch c.Proxy.Policy.Source.Source {
			case policy.SourceS3:
				m.new = "aws.endpoints.s3"
			case policy.SourceSSM:
				m.new = "aws.endpoints.ssm"
			}
		}
		if m.new == "" {
			names = append(names, m.old+" (unused by the file source)")
			continue
		}
		names = append(names, m.old+" -> "+m.new)
		if m.value == "" {
			continue
		}
		if err := awsenv.CheckURL(m.value); err != nil {
			return "", &FieldError{m.old, m.line, err.Error()}
		}
		cur := c.awsKey(m.new)
		switch {
		case *cur == "":
			*cur = m.value
			from[m.new] = m.old
		case *cur == m.value:
		case from[m.new] != "":
			return "", &FieldError{m.old, m.line, fmt.Sprintf("deprecated alias of %s, which %s already set to %q", m.new, from[m.new], *cur)}
		default:
			return "", &FieldError{m.old, m.line, fmt.Sprintf("deprecated alias of %s, which is set to %q; keep only %s", m.new, *cur, m.new)}
		}
	}
	return "config: deprecated keys, move them to the aws section: " + strings.Join(names, ", "), nil
}

// awsKey returns the field behind an "aws.*" key of the table above.
func (c *Config) awsKey(key string) *string {
	if key == "aws.imds_endpoint" {
		return &c.AWS.IMDSEndpoint
	}
	svc := strings.TrimPrefix(key, "aws.endpoints.")
	switch svc {
	case awsenv.Logs:
		return &c.AWS.Endpoints.Logs
	case awsenv.EC2:
		return &c.AWS.Endpoints.EC2
	case awsenv.AutoScaling:
		return &c.AWS.Endpoints.AutoScaling
	case awsenv.S3:
		return &c.AWS.Endpoints.S3
	case awsenv.SSM:
		return &c.AWS.Endpoints.SSM
	}
	panic("config: no aws key " + key)
}

// AWSUses lists the AWS services this configuration calls and the key
// that turns each on (for `check --explain`).
func (c *Config) AWSUses() []awsenv.Use {
	var u []awsenv.Use
	if c.Logship.Sink == "cloudwatch" {
		u = append(u, awsenv.Use{Service: awsenv.Logs, By: "logship.sink cloudwatch"})
	}
	if c.Steer.DisableSourceDestCheck {
		u = append(u, awsenv.Use{Service: awsenv.EC2, By: "steer.disable_source_dest_check"})
	}
	if c.Lifecycle.Enabled {
		u = append(u, awsenv.Use{Service: awsenv.AutoScaling, By: "lifecycle.enabled"})
	}
	switch c.Proxy.Policy.Source.Source {
	case policy.SourceS3, policy.SourceSSM:
		u = append(u, awsenv.Use{Service: c.Proxy.Policy.Source.Source, By: "proxy.policy.source " + c.Proxy.Policy.Source.Source})
	}
	if c.CA.Source == awsenv.KMS || c.CA.Source == awsenv.SecretsManager {
		u = append(u, awsenv.Use{Service: c.CA.Source, By: "ca.source " + c.CA.Source})
	}
	return u
}
