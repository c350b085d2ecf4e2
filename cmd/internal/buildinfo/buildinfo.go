// Package buildinfo says which build is running: the release version
// stamped by the linker (make build / make release pass
// -X .../buildinfo.version=...), the VCS commit the Go toolchain records,
// and the Go version. `gwlbproxy version` prints it and the metrics
// endpoint exports it as gwlbproxy_build_info, so a fleet's dashboards
// can tell which AMI every instance runs.
package buildinfo

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Set at link time; empty in `go run` and `go test` builds.
var (
	version string
	commit  string
)

// SetVersion sets the release version when the build was stamped the
// older way, -X main.version=... (main calls it before anything reads
// Get). A version stamped into this package wins.
func SetVersion(v string) {
	if version == "" {
		version = v
	}
}

// Info identifies the build.
type Info struct {
	Version   string // release version, "devel" when not stamped
	Commit    string // full VCS revision, "" when unknown
	Modified  bool   // built from a work tree with local changes
	GoVersion string
}

// Get returns the running build's identity.
func Get() Info {
	i := Info{Version: version, Commit: commit, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if i.Commit == "" {
					i.Commit = s.Value
				}
			case "vcs.modified":
				i.Modified = s.Value == "true"
			}
		}
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
	}
	if i.Version == "" {
		i.Version = "devel"
	}
	return i
}

// Collector exports gwlbproxy_build_info{version,goversion,commit} 1.
func Collector() prometheus.Collector {
	i := Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "gwlbproxy_build_info",
		Help: "Build of the running gwlbproxy; always 1.",
		ConstLabels: prometheus.Labels{
			"version": i.Version, "goversion": i.GoVersion, "commit": i.Commit,
		},
	})
	g.Set(1)
	return g
}
