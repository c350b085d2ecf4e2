package policy

import "fmt"

// Policy sources (Config.Source).
const (
	// SourceFile: the rules are the ones in the configuration file, read
	// again on SIGHUP (systemctl reload).
	SourceFile = "file"
)

// SourceConfig says where the policy comes from. It sits inline in the
// policy section (proxy.policy.source ...).
type SourceConfig struct {
	// Source is "file" (default): the policy keys of this section.
	Source string `yaml:"source"`
}

// Validate checks c; messages start with the yaml key.
func (c *SourceConfig) Validate() error {
	switch c.Source {
	case SourceFile, "":
	default:
		return fmt.Errorf("source: %q is not file", c.Source)
	}
	return nil
}
