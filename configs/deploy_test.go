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

// dashboardMetrics are the EMF metric names the dashboard plots, per
// action (SEARCH over the dimension set emfDimensions) or fleet-wide (no
// dimension); logship must emit each of them.
var dashboardMetrics = []string{"latency_count", "latency_ms_max", "latency_ms_sum", "oldest_unshipped_seconds", "requests", "status_4xx", "status_5xx"}

const emfDimensions = "action"

// signalResource is the logical id the user data signals and that carries
// the CreationPolicy and the rolling update's WaitOnResourceSignals.
const signalResource = "AutoScalingGroup"

// sampleParams are parameter values used to render Fn::Sub strings.
var sampleParams = map[string]string{
	"AWS::Region":                       "eu-west-1",
	"AWS::StackName":                    "egress",
	"AWS::AccountId":                    "123456789012",
	"AWS::Partition":                    "aws",
	"AWS::URLSuffix":                    "amazonaws.com",
	"LogGroup":                          "/gwlbproxy/records",
	"CAKey.Arn":                         "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
	"SecretArn":                         "",
	"HealthCheckPort":                   "80",
	"DrainDeadlineSeconds":              "60",
	"DisableSourceDestCheck":            "false",
	"EgressMode":                        "nat",
	"IdsEnabled":                        "false",
	"local:GwlbSources":                 "10.0.1.0/24, 10.0.2.0/24",
	"local:CASource":                    "kms",
	"PolicySource":                      "s3",
	"PolicyBucket":                      "egress-policybucket-1a2b3c4d5e6f",
	"local:PolicyBucketName":            "egress-policybucket-1a2b3c4d5e6f",
	"PolicyObjectKey":                   "gwlbproxy/policy.yaml",
	"local:PolicyParameterName":         "",
	"PolicyPollSeconds":                 "60",
	"CACertificate":                     "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
	"LoadBalancer.LoadBalancerFullName": "gwy/egress-gwlb/0123456789abcdef",
	"TargetGroup.TargetGroupFullName":   "targetgroup/egress-geneve/0123456789abcdef",
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
	signalArgs := checkRuncmd(t, cc.Runcmd)

	var cfg struct {
		AWS struct {
			Region string
			IMDS   string
		} `yaml:"aws"`
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
	// issue 17: the one AWS environment: the stack's region, IMDS on (the
	// instance id, lifecycle state and role credentials come from it).
	if cfg.AWS.Region != sampleParams["AWS::Region"] || cfg.AWS.IMDS != "enabled" {
		t.Errorf("aws = %+v, want region %s and imds enabled", cfg.AWS, sampleParams["AWS::Region"])
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

	if r, _ := tpl.section("Resources")["AutoScalingGroup"].(map[string]any); r["Condition"] != "FleetReady" {
		t.Errorf("AutoScalingGroup.Condition = %v: instances must wait for the CA (FleetReady)", r["Condition"])
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
	// The signal command line must parse too (--dry-run sends nothing).
	out, err = exec.Command(bin, append(signalArgs, "--dry-run")...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "would signal SUCCESS to egress/"+signalResource) {
		t.Errorf("%s %s --dry-run: %v\n%s", bin, strings.Join(signalArgs, " "), err, out)
	}
}

// TestUserDataIds (issue 19): the IdsEnabled parameter turns on both the
// decryption mirror and the eve.json alert shipping in the rendered config,
// off by default; with $GWLBPROXY_BIN both renderings pass `gwlbproxy check`.
func TestUserDataIds(t *testing.T) {
	tpl := mustTemplate(t)
	if p, _ := tpl.section("Parameters")["IdsEnabled"].(map[string]any); p == nil || p["Default"] != "false" {
		t.Fatalf("parameter IdsEnabled = %v, want default \"false\"", p)
	}
	_, sub := userDataSub(t, tpl)
	for _, on := range []string{"true", "false"} {
		rendered, err := subString(sub, func(name string) string {
			if name == "IdsEnabled" {
				return on
			}
			return sampleValue(t)(name)
		})
		if err != nil {
			t.Fatal(err)
		}
		var cc struct {
			WriteFiles []struct {
				Path    string
				Content string
			} `yaml:"write_files"`
		}
		if err := yaml.Unmarshal([]byte(rendered), &cc); err != nil {
			t.Fatalf("cloud-config: %v", err)
		}
		var content string
		for _, f := range cc.WriteFiles {
			if f.Path == configPath {
				content = f.Content
			}
		}
		var cfg struct {
			Proxy struct {
				Mirror struct{ Enabled bool }
			}
			Logship struct {
				IDSAlerts struct{ Enabled bool } `yaml:"ids_alerts"`
			}
		}
		if err := yaml.Unmarshal([]byte(content), &cfg); err != nil {
			t.Fatalf("config: %v\n%s", err, content)
		}
		want := on == "true"
		if cfg.Proxy.Mirror.Enabled != want || cfg.Logship.IDSAlerts.Enabled != want {
			t.Errorf("IdsEnabled=%s: proxy.mirror.enabled %v, logship.ids_alerts.enabled %v", on, cfg.Proxy.Mirror.Enabled, cfg.Logship.IDSAlerts.Enabled)
		}
		bin := os.Getenv("GWLBPROXY_BIN")
		if bin == "" {
			continue
		}
		f := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "check", "--config", f).CombinedOutput(); err != nil {
			t.Errorf("IdsEnabled=%s: %s check: %v\n%s", on, bin, err, out)
		}
	}
}

// TestUserDataSignalScript runs the user data's shell script with a fake
// systemctl (succeeding, then failing) and a fake gwlbproxy that records its
// arguments: a unit that reached READY is reported as success, one that
// failed as failure, and the signal names the stack and the group.
func TestUserDataSignalScript(t *testing.T) {
	tpl := mustTemplate(t)
	_, sub := userDataSub(t, tpl)
	rendered, err := subString(sub, sampleValue(t))
	if err != nil {
		t.Fatal(err)
	}
	var cc struct {
		Runcmd [][]string `yaml:"runcmd"`
	}
	if err := yaml.Unmarshal([]byte(rendered), &cc); err != nil {
		t.Fatal(err)
	}
	checkRuncmd(t, cc.Runcmd)
	dir := t.TempDir()
	record := filepath.Join(dir, "args")
	fake := filepath.Join(dir, "gwlbproxy")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nprintf '%s\\n' \"$@\" > "+record+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := strings.ReplaceAll(cc.Runcmd[0][2], "/usr/bin/gwlbproxy ", fake+" ")
	for _, c := range []struct {
		systemctlExit int
		want          string
	}{{0, "success"}, {1, "failure"}} {
		if err := os.WriteFile(filepath.Join(dir, "systemctl"), fmt.Appendf(nil, "#!/bin/sh\n[ \"$1 $2\" = 'start gwlbproxy.service' ] || exit 99\nexit %d\n", c.systemctlExit), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Remove(record)
		cmd := exec.Command("sh", "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("script: %v\n%s", err, out)
		}
		data, err := os.ReadFile(record)
		if err != nil {
			t.Fatalf("systemctl exit %d: cfn-signal not run: %v", c.systemctlExit, err)
		}
		args := strings.Fields(string(data))
		i := slices.Index(args, "--status")
		if args[0] != "cfn-signal" || i < 0 || args[i+1] != c.want {
			t.Errorf("systemctl exit %d: cfn-signal %q, want --status %s", c.systemctlExit, args, c.want)
		}
		if j := slices.Index(args, "--stack"); j < 0 || args[j+1] != sampleParams["AWS::StackName"] {
			t.Errorf("cfn-signal %q does not name the stack %s", args, sampleParams["AWS::StackName"])
		}
	}
}

// checkRuncmd checks the user data's commands: one shell script that
// starts the unit (for Type=notify, `systemctl start` returns when the
// daemon is READY, non-zero if it failed) and then execs cfn-signal with
// success or failure accordingly. It returns cfn-signal's arguments with
// the status resolved to success.
func checkRuncmd(t *testing.T, runcmd [][]string) []string {
	t.Helper()
	if len(runcmd) != 1 || len(runcmd[0]) != 3 || runcmd[0][0] != "sh" || runcmd[0][1] != "-c" {
		t.Fatalf("runcmd = %q, want one [sh, -c, script]", runcmd)
	}
	script := runcmd[0][2]
	if out, err := exec.Command("sh", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Errorf("runcmd script does not parse: %v\n%s\n%s", err, out, script)
	}
	start := strings.Index(script, "if systemctl start gwlbproxy.service; then status=success; else status=failure; fi;")
	_, signal, ok := strings.Cut(script, "exec /usr/bin/gwlbproxy ")
	if start < 0 || !ok {
		t.Fatalf("runcmd script does not start the unit and then exec /usr/bin/gwlbproxy cfn-signal:\n%s", script)
	}
	args := strings.Fields(strings.ReplaceAll(signal, `"$status"`, "success"))
	if args[0] != "cfn-signal" || !slices.Contains(args, `--status`) {
		t.Fatalf("runcmd execs %q, want cfn-signal --status \"$status\"", args)
	}
	i := slices.Index(args, "--resource")
	if i < 0 || i+1 >= len(args) || args[i+1] != signalResource {
		t.Errorf("cfn-signal --resource is not %s: %q", signalResource, args)
	}
	i = slices.Index(args, "--wait-healthy")
	if i < 0 || i+1 >= len(args) || !strings.HasSuffix(args[i+1], ":"+sampleParams["HealthCheckPort"]+healthPath) {
		t.Errorf("cfn-signal does not wait for the health check the target group uses: %q", args)
	}
	return args
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
// exactly dashboardMetrics from the EMF namespace, that sums and counts are
// read with the Sum statistic (maxima with Maximum; never Average, which
// would average per-instance values), that derived figures are math on the
// widget's own series, and that logship names each metric it plots.
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
				Title   string
				Metrics [][]any
				Query   string
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &dash); err != nil {
		t.Fatalf("dashboard body is not JSON: %v\n%s", err, body)
	}
	searchRE := regexp.MustCompile(`SEARCH\('\{([^,}]+),([^}]*)\} MetricName="([^"]+)"', '([A-Za-z]+)', 60\)`)
	identRE := regexp.MustCompile(`\b[a-z][A-Za-z0-9_]*\b`)
	wantStat := func(name string) string {
		if strings.HasSuffix(name, "_max") || name == "oldest_unshipped_seconds" {
			return "Maximum"
		}
		return "Sum"
	}
	var plotted []string
	plot := func(name string) {
		if !slices.Contains(plotted, name) {
			plotted = append(plotted, name)
		}
	}
	meanFromSums := false
	for _, w := range dash.Widgets {
		if w.Type == "log" {
			if !strings.Contains(w.Properties.Query, "SOURCE '"+sampleParams["LogGroup"]+"'") {
				t.Errorf("log widget does not query the stack's group: %s", w.Properties.Query)
			}
			continue
		}
		ids := map[string]string{} // id -> metric name or "expr"
		var exprs []string
		for _, row := range w.Properties.Metrics {
			if len(row) == 0 {
				t.Errorf("%s: empty metrics row", w.Properties.Title)
				continue
			}
			if em, ok := row[0].(map[string]any); ok {
				expr, _ := em["expression"].(string)
				id, _ := em["id"].(string)
				ids[id] = "expr"
				if strings.Contains(expr, "SEARCH(") {
					sm := searchRE.FindStringSubmatch(expr)
					if sm == nil {
						t.Errorf("%s: SEARCH %q is not SEARCH('{namespace,dims} MetricName=\"...\"', 'Stat', 60)", w.Properties.Title, expr)
						continue
					}
					if sm[1] != emfNamespace || sm[2] != emfDimensions {
						t.Errorf("dashboard searches {%s,%s}, want {%s,%s}", sm[1], sm[2], emfNamespace, emfDimensions)
					}
					if sm[4] != wantStat(sm[3]) {
						t.Errorf("%s: %s read with %s, want %s", w.Properties.Title, sm[3], sm[4], wantStat(sm[3]))
					}
					plot(sm[3])
					continue
				}
				exprs = append(exprs, expr)
				continue
			}
			ns, _ := row[0].(string)
			name, _ := row[1].(string)
			opts, _ := row[len(row)-1].(map[string]any)
			stat, _ := opts["stat"].(string)
			id, _ := opts["id"].(string)
			ids[id] = name
			switch ns {
			case emfNamespace:
				if len(row) != 3 {
					t.Errorf("%s: %v: fleet metrics have no dimension", w.Properties.Title, row)
				}
				if stat != wantStat(name) {
					t.Errorf("%s: %s read with %q, want %s", w.Properties.Title, name, stat, wantStat(name))
				}
				plot(name)
			case "AWS/GatewayELB":
				if len(row) != 7 || fmt.Sprintln(row[2], row[4]) != "LoadBalancer TargetGroup\n" ||
					row[3] != sampleParams["LoadBalancer.LoadBalancerFullName"] || row[5] != sampleParams["TargetGroup.TargetGroupFullName"] {
					t.Errorf("%s: GWLB metric %v lacks the stack's LoadBalancer and TargetGroup dimensions", w.Properties.Title, row)
				}
			default:
				t.Errorf("%s: unexpected namespace %q", w.Properties.Title, ns)
			}
		}
		for _, e := range exprs {
			var used []string
			for _, id := range identRE.FindAllString(e, -1) {
				if _, ok := ids[id]; !ok {
					t.Errorf("%s: expression %q uses %q, not a series of the widget", w.Properties.Title, e, id)
				}
				used = append(used, ids[id])
			}
			if slices.Contains(used, "latency_ms_sum") && slices.Contains(used, "latency_count") && strings.Contains(e, "/") {
				meanFromSums = true
			}
		}
	}
	if !meanFromSums {
		t.Error("no widget computes the mean latency as latency_ms_sum / latency_count")
	}
	if strings.Contains(body, "Average") {
		t.Error("the dashboard reads some metric with the Average statistic")
	}
	slices.Sort(plotted)
	want := slices.Clone(dashboardMetrics)
	slices.Sort(want)
	if !slices.Equal(plotted, want) {
		t.Errorf("dashboard plots %v, want %v", plotted, want)
	}

	lits, emf := logshipLiterals(t)
	if !emf {
		t.Fatal("logship emits no EMF (no \"CloudWatchMetrics\" in its sources)")
	}
	for _, m := range dashboardMetrics {
		if !logshipHas(lits, `{"Name":"`+m+`"`) {
			t.Errorf("dashboard plots %q but logship's EMF declares no such metric", m)
		}
	}
	if !logshipHas(lits, `"Dimensions":[["`+emfDimensions+`"],[]]`) {
		t.Errorf("logship's EMF does not publish per %s and fleet-wide (dimension sets [%[1]s] and [])", emfDimensions)
	}
}

func logshipHas(lits map[string]bool, sub string) bool {
	return slices.ContainsFunc(sortedKeys(lits), func(l string) bool { return strings.Contains(l, sub) })
}

// TestSignals ties the user data's cfn-signal to the group that waits for
// it: a CreationPolicy counting every first instance, and a rolling update
// that waits for each new instance's signal, replaces one at a time and
// keeps MinSize in service, so a bad image or config rolls back.
func TestSignals(t *testing.T) {
	tpl := mustTemplate(t)
	r, _ := tpl.section("Resources")[signalResource].(map[string]any)
	if r == nil || r["Type"] != "AWS::AutoScaling::AutoScalingGroup" {
		t.Fatalf("%s is not the Auto Scaling group", signalResource)
	}
	cp, _ := r["CreationPolicy"].(map[string]any)
	rs, _ := cp["ResourceSignal"].(map[string]any)
	if fmt.Sprint(rs["Count"]) != "map[Ref:DesiredCapacity]" {
		t.Errorf("CreationPolicy.ResourceSignal.Count = %v, want the desired capacity", rs["Count"])
	}
	timeout, ok := isoMinutes(rs["Timeout"])
	if !ok || timeout < 10 || timeout > 60 {
		t.Errorf("CreationPolicy timeout %v: want 10-60 minutes (boot, READY, health wait, signal retries)", rs["Timeout"])
	}
	up, _ := r["UpdatePolicy"].(map[string]any)
	ru, _ := up["AutoScalingRollingUpdate"].(map[string]any)
	if ru["WaitOnResourceSignals"] != true {
		t.Errorf("rolling update does not wait for signals: %v", ru)
	}
	if pause, ok := isoMinutes(ru["PauseTime"]); !ok || pause < timeout {
		t.Errorf("rolling update PauseTime %v: with WaitOnResourceSignals it is the signal timeout; want >= the creation timeout", ru["PauseTime"])
	}
	if fmt.Sprint(ru["MinInstancesInService"]) != "map[Ref:MinSize]" || ru["MaxBatchSize"] != 1 {
		t.Errorf("rolling update replaces %v at a time keeping %v: want 1 and MinSize", ru["MaxBatchSize"], ru["MinInstancesInService"])
	}
	susp := fmt.Sprint(ru["SuspendProcesses"])
	for _, p := range []string{"HealthCheck", "ReplaceUnhealthy", "AZRebalance"} {
		if !strings.Contains(susp, p) {
			t.Errorf("rolling update does not suspend %s (the group would replace instances mid-update)", p)
		}
	}
}

// isoMinutes parses the PTnM / PTnH durations used for signal timeouts.
func isoMinutes(v any) (int, bool) {
	s, _ := v.(string)
	m := regexp.MustCompile(`^PT(?:(\d+)H)?(?:(\d+)M)?$`).FindStringSubmatch(s)
	if m == nil || s == "PT" {
		return 0, false
	}
	h, _ := strconv.Atoi(m[1])
	mins, _ := strconv.Atoi(m[2])
	return 60*h + mins, true
}

// TestAlarms checks the three alarms read metrics that exist: GWLB's
// unhealthy host count for the stack's target group, and the EMF fleet
// metrics logship emits.
func TestAlarms(t *testing.T) {
	tpl := mustTemplate(t)
	lits, _ := logshipLiterals(t)
	alarms := map[string]map[string]any{}
	for _, id := range tpl.resourcesOfType("AWS::CloudWatch::Alarm") {
		_, p := tpl.resource(id)
		alarms[id] = p
		for _, k := range []string{"AlarmActions", "OKActions"} {
			if fn, arg, _ := intrinsic(p[k]); fn != "Fn::If" || arg.([]any)[0] != "HasAlarmTopic" {
				t.Errorf("%s.%s = %v, want the optional topic", id, k, p[k])
			}
		}
	}
	u := alarms["UnhealthyTargetsAlarm"]
	if u["Namespace"] != "AWS/GatewayELB" || u["MetricName"] != "UnHealthyHostCount" {
		t.Errorf("UnhealthyTargetsAlarm reads %v/%v", u["Namespace"], u["MetricName"])
	}
	dims := fmt.Sprint(u["Dimensions"])
	if !strings.Contains(dims, "Name:LoadBalancer Value:map[Fn::GetAtt:[LoadBalancer LoadBalancerFullName]]") ||
		!strings.Contains(dims, "Name:TargetGroup Value:map[Fn::GetAtt:[TargetGroup TargetGroupFullName]]") {
		t.Errorf("UnhealthyTargetsAlarm dimensions %s, want the stack's LoadBalancer and TargetGroup full names", dims)
	}

	b := alarms["UnshippedRecordsAlarm"]
	if b["Namespace"] != emfNamespace || b["MetricName"] != "oldest_unshipped_seconds" || b["Statistic"] != "Maximum" {
		t.Errorf("UnshippedRecordsAlarm reads %v/%v %v", b["Namespace"], b["MetricName"], b["Statistic"])
	}
	if b["TreatMissingData"] != "breaching" {
		t.Error("UnshippedRecordsAlarm: the backlog record rides in the spool it measures; missing data must breach")
	}
	if r, _ := tpl.section("Resources")["UnshippedRecordsAlarm"].(map[string]any); r["Condition"] != "FleetReady" {
		t.Error("UnshippedRecordsAlarm must exist only with a fleet (it breaches on missing data)")
	}
	if !logshipHas(lits, `{"Name":"oldest_unshipped_seconds"`) || !logshipHas(lits, `"Dimensions":[[]]`) {
		t.Error("logship does not publish oldest_unshipped_seconds without dimension")
	}

	h := alarms["Http5xxRateAlarm"]
	metrics, _ := h["Metrics"].([]any)
	var expr string
	names := map[string]string{}
	for _, m := range metrics {
		mm, _ := m.(map[string]any)
		if e, ok := mm["Expression"].(string); ok {
			expr = e
			continue
		}
		ms, _ := mm["MetricStat"].(map[string]any)
		met, _ := ms["Metric"].(map[string]any)
		if met["Namespace"] != emfNamespace || ms["Stat"] != "Sum" || met["Dimensions"] != nil {
			t.Errorf("Http5xxRateAlarm series %v: want the fleet Sum in %s", mm, emfNamespace)
		}
		name, _ := met["MetricName"].(string)
		names[mm["Id"].(string)] = name
		if !logshipHas(lits, `{"Name":"`+name+`"`) {
			t.Errorf("Http5xxRateAlarm reads %s, which logship does not publish", name)
		}
	}
	if names["s5xx"] != "status_5xx" || names["requests"] != "requests" || !strings.Contains(expr, "s5xx / requests") {
		t.Errorf("Http5xxRateAlarm computes %q over %v, want status_5xx / requests", expr, names)
	}
}

// TestVpcEndpoints: every AWS service the instance role grants calls to has
// an interface endpoint (private DNS), created under a condition that
// implies CreateVpcEndpoints, reachable from the appliances on 443.
func TestVpcEndpoints(t *testing.T) {
	tpl := mustTemplate(t)
	granted, _ := grantedActions(tpl, instanceRole(t, tpl))
	services := map[string]bool{}
	for a := range granted {
		services[strings.Split(a, ":")[0]] = true
	}
	res := tpl.section("Resources")
	conds := tpl.section("Conditions")
	endpoints := map[string]string{} // service -> condition
	for _, id := range tpl.resourcesOfType("AWS::EC2::VPCEndpoint") {
		_, p := tpl.resource(id)
		sub, _ := p["ServiceName"].(map[string]any)["Fn::Sub"].(string)
		svc, ok := strings.CutPrefix(sub, "com.amazonaws.${AWS::Region}.")
		if !ok {
			t.Errorf("%s: ServiceName %v", id, p["ServiceName"])
			continue
		}
		c, _ := res[id].(map[string]any)["Condition"].(string)
		if c != "CreateVpcEndpoints" && !strings.Contains(fmt.Sprint(conds[c]), "map[Condition:CreateVpcEndpoints]") {
			t.Errorf("%s: condition %q does not imply CreateVpcEndpoints", id, c)
		}
		if p["VpcEndpointType"] != "Interface" || fmt.Sprint(p["SecurityGroupIds"]) != "[map[Ref:EndpointSecurityGroup]]" {
			t.Errorf("%s: want an interface endpoint in EndpointSecurityGroup", id)
		}
		if svc != "s3" && p["PrivateDnsEnabled"] != true {
			t.Errorf("%s: private DNS off: the SDK's regional name would still leave the VPC", id)
		}
		endpoints[svc] = c
	}
	for svc := range services {
		if _, ok := endpoints[svc]; !ok {
			t.Errorf("the role grants %s calls but there is no %s VPC endpoint", svc, svc)
		}
	}
	_, sg := tpl.resource("EndpointSecurityGroup")
	if in := fmt.Sprint(sg["SecurityGroupIngress"]); !strings.Contains(in, "FromPort:443") || !strings.Contains(in, "SourceSecurityGroupId:map[Fn::GetAtt:[SecurityGroup GroupId]]") {
		t.Errorf("EndpointSecurityGroup ingress %s, want 443 from the appliances' group", in)
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
