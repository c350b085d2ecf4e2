package config

import (
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// PolicyDocument is what a remote policy source (proxy.policy.source s3
// or ssm) holds: the policy keys of proxy.policy, nothing else (a fetched
// document cannot move the source or touch other settings).
type PolicyDocument struct {
	Rules         []policy.Rule `yaml:"rules"`
	DefaultAction policy.Action `yaml:"default_action"`
	NoSNIAction   string        `yaml:"no_sni_action"`
	ECHAction     string        `yaml:"ech_action"`
	ReportOnly    bool          `yaml:"report_only"`
}

// DecodePolicy decodes and validates a policy document strictly (unknown
// keys are errors naming the key) over the fail-closed defaults, and
// returns it as a policy with src as its source settings.
func DecodePolicy(data []byte, src policy.SourceConfig) (policy.Config, error) {
	d := policy.DefaultConfig()
	doc := PolicyDocument{DefaultAction: d.DefaultAction, NoSNIAction: d.NoSNIAction, ECHAction: d.ECHAction}
	if err := decodeStrict(data, &doc); err != nil {
		return policy.Config{}, oneLine{err}
	}
	pc := policy.Config{Rules: doc.Rules, DefaultAction: doc.DefaultAction, NoSNIAction: doc.NoSNIAction,
		ECHAction: doc.ECHAction, ReportOnly: doc.ReportOnly, Source: src}
	if _, err := policy.New(pc); err != nil {
		return policy.Config{}, oneLine{err}
	}
	return pc, nil
}
