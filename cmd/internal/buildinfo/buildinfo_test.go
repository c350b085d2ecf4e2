package buildinfo

import (
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollector(t *testing.T) {
	version, commit = "v1.2.3", "0123456789abcdef0123456789abcdef01234567"
	defer func() { version, commit = "", "" }()
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collector())
	want := `# HELP gwlbproxy_build_info Build of the running gwlbproxy; always 1.
# TYPE gwlbproxy_build_info gauge
gwlbproxy_build_info{commit="0123456789abcdef0123456789abcdef01234567",goversion="` + runtime.Version() + `",version="v1.2.3"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "gwlbproxy_build_info"); err != nil {
		t.Fatal(err)
	}
}

func TestUnstamped(t *testing.T) {
	if i := Get(); i.Version == "" || i.GoVersion != runtime.Version() {
		t.Fatalf("%+v", i)
	}
}
