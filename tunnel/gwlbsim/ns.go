//go:build linux

package gwlbsim

import "github.com/gwlbproxy/gwlbproxy/tunnel/inns"

// NS is a named network namespace of a Topology: tunnel/inns's, which also
// creates the demo's and the benchmarks' namespaces beside a Topology's.
type NS = inns.NS
