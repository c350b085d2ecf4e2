package configs

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// Contracts between the template and the other artefacts. Each constant
// is the one place a shared value lives on this side; the tests tie it to
// the template, the unit and the code.
const (
	// defaultDrainDeadline is the config's drain.deadline default
	// (cmd/internal/config.Default) in seconds.
	defaultDrainDeadline = 60
	// healthPath is what the health server answers on besides "/".
	healthPath = "/healthz"
	// configPath is where the unit reads and user data writes the config.
	configPath = "/etc/gwlbproxy/gwlbproxy.yaml"
	// emfNamespace is the embedded-metric-format namespace logship emits.
	emfNamespace = "gwlbproxy"
)

// dashboardMetrics are the EMF metric names the dashboard plots (with the
// dimension set emfDimensions); logship must emit each of them.
var dashboardMetrics = []string{"latency_ms_avg", "latency_ms_max", "requests", "status_4xx", "status_5xx"}

const emfDimensions = "action"

// sampleParams are parameter values used to render Fn::Sub strings.
var sampleParams = map[string]string{
	"AWS::Region":            "eu-west-1",
	"AWS::StackName":         "egress",
	"AWS::AccountId":         "123456789012",
	"AWS::Partition":         "aws",
	"AWS::URLSuffix":         "amazonaws.com",
	"LogGroup":               "/gwlbproxy/records",
	"CAKey.Arn":              "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
	"SecretArn":              "",
	"HealthCheckPort":        "80",
	"DrainDeadlineSeconds":   "60",
	"DisableSourceDestCheck": "false",
	"EgressMode":             "nat",
	"local:GwlbSources":      "10.0.1.0/24, 10.0.2.0/24",
	"local:CASource":         "kms",
	"CACertificate":          "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
}

func sampleValue(t *testing.T) func(string) string {
	return func(name string) string {
		v, ok := sampleParams[name]
		if !ok {
			t.Errorf("no sample value for ${%s}; add it to sampleParams", name)
		}
		return v
	}
}

// launchUserData returns the launch template's user data Fn::Sub string.
func launchUserData(t *testing.T, tpl template) string {
	t.Helper()
	s, _ := userDataSub(t, tpl)
	return s
}

func userDataSub(t *testing.T, tpl template) (string, any) {
	t.Helper()
	_, props := tpl.resource("LaunchTemplate")
	data, _ := props["LaunchTemplateData"].(map[string]any)
	fn, arg, ok := intrinsic(data["UserData"])
	if !ok || fn != "Fn::Base64" {
		t.Fatalf("LaunchTemplate UserData is not Fn::Base64: %v", data["UserData"])
	}
	fn, sub, ok := intrinsic(arg)
	if !ok || fn != "Fn::Sub" {
		t.Fatalf("UserData is not Fn::Base64 of Fn::Sub")
	}
	switch a := sub.(type) {
	case string:
		return a, sub
	case []any:
		s, _ := a[0].(string)
		return s, sub
	}
	t.Fatalf("UserData Fn::Sub argument is %T", sub)
	return "", nil
}

// TestUserDataConfig renders the user data with sample parameters and
// checks the cloud-config and the appliance config it writes. With
// $GWLBPROXY_BIN set, the binary's own `check` validates the config too.
func TestUserDataConfig(t *testing.T) {
	tpl := mustTemplate(t)
	_, sub := userDataSub(t, tpl)
	rendered, err := subString(sub, sampleValue(t))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rendered, "#cloud-config\n") {
		t.Fatalf("user data is not a cloud-config:\n%s", rendered)
	}
	var cc struct {
		WriteFiles []struct {
			Path, Owner, Permissions, Content, Encoding string
		} `yaml:"write_files"`
		Runcmd [][]string `yaml:"runcmd"`
	}
	if err := yaml.Unmarshal([]byte(rendered), &cc); err != nil {
		t.Fatalf("cloud-config: %v\n%s", err, rendered)
	}
	var content, rootCert string
	for _, f := range cc.WriteFiles {
		if f.Path == "/etc/gwlbproxy/ca/root.crt" {
			rootCert = f.Content
			if f.Encoding != "b64" {
				t.Errorf("root certificate written with encoding %q, want b64 (the parameter is base64)", f.Encoding)
			}
		}
		if f.Path == configPath {
			content = f.Content
			if f.Permissions != "0640" || f.Owner != "root:gwlbproxy" {
				t.Errorf("config written %s %s, want 0640 root:gwlbproxy (readable by the service user only)", f.Permissions, f.Owner)
			}
		}
	}
	if content == "" {
		t.Fatalf("user data writes no %s", configPath)
	}
	if !slices.ContainsFunc(cc.Runcmd, func(c []string) bool {
		return slices.Equal(c, []string{"systemctl", "start", "gwlbproxy.service"})
	}) {
		t.Errorf("runcmd does not start gwlbproxy.service: %v", cc.Runcmd)
	}

	var cfg struct {
		Health struct{ Listen string }
		Drain  struct {
			Deadline string
		}
		Lifecycle struct {
			Enabled   bool
			HookName  string `yaml:"hook_name"`
			GroupName string `yaml:"group_name"`
		}
		Tunnel struct {
			AllowedSources []string `yaml:"allowed_sources"`
		}
		Logship struct {
			Sink       string
			CloudWatch struct {
				Region      string
				LogGroup    string `yaml:"log_group"`
				CreateGroup *bool  `yaml:"create_group"`
			}
			EMF struct {
				Enabled   bool
				Namespace string
			}
		}
		CA struct {
			Source       string
			KMSKeyID     string `yaml:"kms_key_id"`
			RootCertFile string `yaml:"root_cert_file"`
		} `yaml:"ca"`
	}
	if err := yaml.Unmarshal([]byte(content), &cfg); err != nil {
		t.Fatalf("config: %v\n%s", err, content)
	}
	if cfg.Health.Listen != ":80" {
		t.Errorf("health.listen = %q, want :80 (the target group's health check port)", cfg.Health.Listen)
	}
	if cfg.Drain.Deadline != fmt.Sprintf("%ds", defaultDrainDeadline) {
		t.Errorf("drain.deadline = %q", cfg.Drain.Deadline)
	}
	if want := []string{"10.0.1.0/24", "10.0.2.0/24"}; !slices.Equal(cfg.Tunnel.AllowedSources, want) {
		t.Errorf("tunnel.allowed_sources = %q, want %q", cfg.Tunnel.AllowedSources, want)
	}
	for _, s := range cfg.Tunnel.AllowedSources {
		if _, err := netip.ParsePrefix(s); err != nil {
			t.Errorf("tunnel.allowed_sources: %v", err)
		}
	}
	cw := cfg.Logship.CloudWatch
	if cfg.Logship.Sink != "cloudwatch" || cw.LogGroup != sampleParams["LogGroup"] || cw.Region != sampleParams["AWS::Region"] {
		t.Errorf("logship = %+v, want the cloudwatch sink to the stack's group", cfg.Logship)
	}
	if !cfg.Logship.EMF.Enabled || cfg.Logship.EMF.Namespace != emfNamespace {
		t.Errorf("logship.emf = %+v, want enabled in namespace %s (the dashboard plots it)", cfg.Logship.EMF, emfNamespace)
	}
	if cw.CreateGroup == nil || *cw.CreateGroup {
		t.Error("logship.create_group must be false: the stack owns the group and the role lacks logs:CreateLogGroup")
	}
	if cfg.CA.Source != "kms" || cfg.CA.KMSKeyID != sampleParams["CAKey.Arn"] {
		t.Errorf("ca = %+v, want source kms with the stack's key", cfg.CA)
	}
	if rootCert != sampleParams["CACertificate"] || cfg.CA.RootCertFile != "/etc/gwlbproxy/ca/root.crt" {
		t.Errorf("ca.root_cert_file = %q; the CACertificate parameter must land there (got %q)", cfg.CA.RootCertFile, rootCert)
	}
	hook := lifecycleHook(t, tpl)
	if !cfg.Lifecycle.Enabled || cfg.Lifecycle.HookName != hook["LifecycleHookName"] {
		t.Errorf("lifecycle = %+v, want enabled with the hook's name %v", cfg.Lifecycle, hook["LifecycleHookName"])
	}
	_, asg := tpl.resource("AutoScalingGroup")
	if name, err := subString(asg["AutoScalingGroupName"].(map[string]any)["Fn::Sub"], sampleValue(t)); err != nil || name != cfg.Lifecycle.GroupName {
		t.Errorf("lifecycle.group_name = %q, the group is named %q", cfg.Lifecycle.GroupName, name)
	}

	for _, k := range []string{"MinSize", "DesiredCapacity"} {
		if fn, arg, _ := intrinsic(asg[k]); fn != "Fn::If" || arg.([]any)[0] != "FleetReady" {
			t.Errorf("AutoScalingGroup.%s = %v: instances must wait for the CA (FleetReady)", k, asg[k])
		}
	}

	bin := os.Getenv("GWLBPROXY_BIN")
	if bin == "" {
		t.Log("GWLBPROXY_BIN not set: the config was not fed to `gwlbproxy check`")
		return
	}
	f := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "check", "--config", f).CombinedOutput()
	if err != nil {
		t.Errorf("%s check --config <user data config>: %v\n%s\nconfig:\n%s", bin, err, out, content)
	}
}

func lifecycleHook(t *testing.T, tpl template) map[string]any {
	t.Helper()
	_, asg := tpl.resource("AutoScalingGroup")
	hooks, _ := asg["LifecycleHookSpecificationList"].([]any)
	for _, h := range hooks {
		hm, _ := h.(map[string]any)
		if hm["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING" {
			return hm
		}
	}
	t.Fatal("AutoScalingGroup has no EC2_INSTANCE_TERMINATING lifecycle hook")
	return nil
}

// refParam returns the parameter a property refers to and its default.
func refParam(t *testing.T, tpl template, v any, what string) (string, int) {
	t.Helper()
	fn, arg, ok := intrinsic(v)
	if !ok || fn != "Ref" {
		t.Fatalf("%s = %v, want a Ref to a parameter", what, v)
	}
	name := arg.(string)
	d, ok := tpl.paramDefault(name)
	if !ok {
		t.Fatalf("%s: parameter %s has no default", what, name)
	}
	n, err := strconv.Atoi(d)
	if err != nil {
		n = -1
	}
	return name, n
}

func TestTargetGroup(t *testing.T) {
	tpl := mustTemplate(t)
	_, tg := tpl.resource("TargetGroup")
	for k, want := range map[string]any{
		"Protocol": "GENEVE", "Port": 6081, "TargetType": "instance",
		"HealthCheckProtocol": "HTTP", "HealthCheckPath": healthPath,
	} {
		if tg[k] != want {
			t.Errorf("TargetGroup.%s = %v, want %v", k, tg[k], want)
		}
	}
	if _, port := refParam(t, tpl, tg["HealthCheckPort"], "HealthCheckPort"); port != 80 {
		t.Errorf("health check port default %d, want 80 (health.listen default)", port)
	}
	attrs := map[string]any{}
	for _, a := range tg["TargetGroupAttributes"].([]any) {
		am := a.(map[string]any)
		attrs[am["Key"].(string)] = am["Value"]
	}
	if _, d := refParam(t, tpl, attrs["deregistration_delay.timeout_seconds"], "deregistration delay"); d != defaultDrainDeadline {
		t.Errorf("deregistration delay default %d, want the drain deadline %d", d, defaultDrainDeadline)
	}
	p1, _ := refParam(t, tpl, attrs["target_failover.on_deregistration"], "target_failover.on_deregistration")
	p2, _ := refParam(t, tpl, attrs["target_failover.on_unhealthy"], "target_failover.on_unhealthy")
	if p1 != p2 {
		t.Errorf("failover attributes use %s and %s; GWLB requires the same value", p1, p2)
	}
	av, _ := tpl.section("Parameters")[p1].(map[string]any)["AllowedValues"].([]any)
	if fmt.Sprint(av) != "[no_rebalance rebalance]" {
		t.Errorf("%s AllowedValues = %v", p1, av)
	}
	// The TCP idle timeout is a GWLB listener attribute, not a target
	// group one (ELB API reference, ListenerAttribute).
	if _, bad := attrs["tcp.idle_timeout.seconds"]; bad {
		t.Error("tcp.idle_timeout.seconds is a listener attribute, not a target group attribute")
	}
	_, ln := tpl.resource("Listener")
	lattrs := map[string]any{}
	for _, a := range ln["ListenerAttributes"].([]any) {
		am := a.(map[string]any)
		lattrs[am["Key"].(string)] = am["Value"]
	}
	if _, idle := refParam(t, tpl, lattrs["tcp.idle_timeout.seconds"], "tcp.idle_timeout.seconds"); idle != 350 {
		t.Errorf("TCP idle timeout default %d, want 350", idle)
	}
	_, lb := tpl.resource("LoadBalancer")
	if lb["Type"] != "gateway" {
		t.Errorf("LoadBalancer.Type = %v", lb["Type"])
	}
	_, es := tpl.resource("EndpointService")
	if fmt.Sprint(es["GatewayLoadBalancerArns"]) != "[map[Ref:LoadBalancer]]" {
		t.Errorf("EndpointService.GatewayLoadBalancerArns = %v", es["GatewayLoadBalancerArns"])
	}
}

// TestTimings ties the lifecycle hook, the drain deadline and the unit's
// stop timeout together.
func TestTimings(t *testing.T) {
	tpl := mustTemplate(t)
	hook := lifecycleHook(t, tpl)
	_, heartbeat := refParam(t, tpl, hook["HeartbeatTimeout"], "HeartbeatTimeout")
	if hook["DefaultResult"] != "CONTINUE" {
		t.Errorf("lifecycle hook DefaultResult = %v, want CONTINUE (a hung drain must not block scale-in forever)", hook["DefaultResult"])
	}
	_, drain := refParam(t, tpl, map[string]any{"Ref": "DrainDeadlineSeconds"}, "DrainDeadlineSeconds")
	if drain != defaultDrainDeadline {
		t.Errorf("DrainDeadlineSeconds default %d, config default %d", drain, defaultDrainDeadline)
	}
	u := mustUnit(t)
	stop := unitSeconds(t, u, "Service", "TimeoutStopSec")
	if stop <= defaultDrainDeadline {
		t.Errorf("TimeoutStopSec %ds must exceed the drain deadline %ds or systemd kills a draining appliance", stop, defaultDrainDeadline)
	}
	if heartbeat <= stop {
		t.Errorf("lifecycle heartbeat %ds must exceed the unit's stop timeout %ds", heartbeat, stop)
	}
}

func TestLogGroupAndCAKey(t *testing.T) {
	tpl := mustTemplate(t)
	_, lg := tpl.resource("LogGroup")
	if lg["LogGroupClass"] != "STANDARD" {
		t.Errorf("LogGroupClass = %v, want STANDARD (Logs Insights field discovery)", lg["LogGroupClass"])
	}
	if _, days := refParam(t, tpl, lg["RetentionInDays"], "RetentionInDays"); days <= 0 {
		t.Errorf("retention default %d", days)
	}
	if fn, arg, _ := intrinsic(lg["KmsKeyId"]); fn != "Fn::If" || arg.([]any)[0] != "HasLogKmsKey" {
		t.Errorf("KmsKeyId = %v, want optional via HasLogKmsKey", lg["KmsKeyId"])
	}
	_, key := tpl.resource("CAKey")
	if key["KeySpec"] != "ECC_NIST_P256" || key["KeyUsage"] != "SIGN_VERIFY" {
		t.Errorf("CAKey spec/usage = %v/%v", key["KeySpec"], key["KeyUsage"])
	}
	pol, _ := key["KeyPolicy"].(map[string]any)
	if st, _ := pol["Statement"].([]any); len(st) == 0 {
		t.Error("CAKey has no key policy statements")
	}
}

// TestQueryDefinitions checks each saved query against
// configs/insights/<name>.cwli: same set, same text.
func TestQueryDefinitions(t *testing.T) {
	tpl := mustTemplate(t)
	inTemplate := map[string]string{}
	for _, id := range tpl.resourcesOfType("AWS::Logs::QueryDefinition") {
		_, q := tpl.resource(id)
		name, _ := q["Name"].(string)
		base, ok := strings.CutPrefix(name, "gwlbproxy/")
		if !ok {
			t.Errorf("%s: Name %q lacks the gwlbproxy/ folder", id, name)
		}
		text, _ := q["QueryString"].(string)
		if strings.TrimSpace(text) == "" {
			t.Errorf("%s: empty QueryString", id)
		}
		if fmt.Sprint(q["LogGroupNames"]) != "[map[Ref:LogGroup]]" {
			t.Errorf("%s: LogGroupNames = %v, want the stack's group", id, q["LogGroupNames"])
		}
		inTemplate[base] = text
	}
	if len(inTemplate) == 0 {
		t.Fatal("no saved queries")
	}
	files, _ := filepath.Glob("insights/*.cwli")
	if len(files) == 0 {
		t.Logf("configs/insights/*.cwli absent: %d inline queries not compared", len(inTemplate))
		return
	}
	onDisk := map[string]bool{}
	for _, f := range files {
		base := strings.TrimSuffix(filepath.Base(f), ".cwli")
		onDisk[base] = true
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text, ok := inTemplate[base]
		if !ok {
			t.Errorf("%s has no AWS::Logs::QueryDefinition named gwlbproxy/%s", f, base)
			continue
		}
		if strings.TrimRight(text, "\n") != strings.TrimRight(string(data), "\n") {
			t.Errorf("query gwlbproxy/%s differs from %s:\ntemplate:\n%s\nfile:\n%s", base, f, text, data)
		}
	}
	for base := range inTemplate {
		if !onDisk[base] {
			t.Errorf("saved query gwlbproxy/%s has no insights/%s.cwli", base, base)
		}
	}
}

// TestDashboardMetrics renders the dashboard body and checks it plots
// exactly dashboardMetrics from the EMF namespace, and that logship (once
// it emits EMF) names each of them.
func TestDashboardMetrics(t *testing.T) {
	tpl := mustTemplate(t)
	_, db := tpl.resource("Dashboard")
	fn, arg, ok := intrinsic(db["DashboardBody"])
	if !ok || fn != "Fn::Sub" {
		t.Fatalf("DashboardBody is not a Fn::Sub")
	}
	body, err := subString(arg, sampleValue(t))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Widgets []struct {
			Type       string
			Properties struct {
				Metrics [][]any
				Query   string
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &dash); err != nil {
		t.Fatalf("dashboard body is not JSON: %v\n%s", err, body)
	}
	searchRE := regexp.MustCompile(`SEARCH\('\{([^,}]+),([^}]*)\} MetricName="([^"]+)"`)
	var plotted []string
	for _, w := range dash.Widgets {
		for _, m := range w.Properties.Metrics {
			for _, e := range m {
				em, _ := e.(map[string]any)
				expr, _ := em["expression"].(string)
				if expr != "" && !searchRE.MatchString(expr) {
					t.Errorf("dashboard expression %q is not a SEARCH('{namespace,dims} MetricName=...')", expr)
				}
				for _, sm := range searchRE.FindAllStringSubmatch(expr, -1) {
					if sm[1] != emfNamespace || sm[2] != emfDimensions {
						t.Errorf("dashboard searches {%s,%s}, want {%s,%s}", sm[1], sm[2], emfNamespace, emfDimensions)
					}
					if !slices.Contains(plotted, sm[3]) {
						plotted = append(plotted, sm[3])
					}
				}
			}
		}
		if w.Type == "log" && !strings.Contains(w.Properties.Query, "SOURCE '"+sampleParams["LogGroup"]+"'") {
			t.Errorf("log widget does not query the stack's group: %s", w.Properties.Query)
		}
	}
	slices.Sort(plotted)
	want := slices.Clone(dashboardMetrics)
	slices.Sort(want)
	if !slices.Equal(plotted, want) {
		t.Errorf("dashboard plots %v, want %v", plotted, want)
	}

	lits, emf := logshipLiterals(t)
	if !emf {
		t.Log("logship emits no EMF yet (no \"CloudWatchMetrics\" in its sources); metric names not cross-checked")
		return
	}
	has := func(sub string) bool {
		return slices.ContainsFunc(sortedKeys(lits), func(l string) bool { return strings.Contains(l, sub) })
	}
	for _, m := range dashboardMetrics {
		if !has(`{"Name":"` + m + `"`) {
			t.Errorf("dashboard plots %q but logship's EMF declares no such metric", m)
		}
	}
	if !has(`"Dimensions":[["` + emfDimensions + `"]]`) {
		t.Errorf("logship's EMF does not use the dimension set [%s] the dashboard searches", emfDimensions)
	}
}

// logshipLiterals returns the string literals (and struct tag names) in
// logship's non-test sources and whether they contain an EMF block.
func logshipLiterals(t *testing.T) (map[string]bool, bool) {
	t.Helper()
	lits := map[string]bool{}
	var files []string
	_ = filepath.WalkDir("../logship", func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".go") {
			files = append(files, p)
		}
		return nil
	})
	fset := token.NewFileSet()
	tagRE := regexp.MustCompile(`json:"([^",]+)`)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			if bl, ok := n.(*ast.BasicLit); ok && bl.Kind == token.STRING {
				if s, err := strconv.Unquote(bl.Value); err == nil {
					lits[s] = true
					for _, m := range tagRE.FindAllStringSubmatch(s, -1) {
						lits[m[1]] = true
					}
				}
			}
			return true
		})
	}
	emf := slices.ContainsFunc(sortedKeys(lits), func(l string) bool { return strings.Contains(l, "CloudWatchMetrics") })
	return lits, emf
}
