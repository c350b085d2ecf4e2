package configs

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The instance role must grant exactly what the appliance calls: missing an
// action breaks production with AccessDenied, an extra one is privilege an
// attacker on the box would inherit. This file derives the calls from the
// Go sources as they are at test time and compares.

// sourceRoots are the directories whose non-test Go files run on the
// appliance.
var sourceRoots = []string{"cmd", "tunnel", "proxy", "ca", "logship"}

// iamPrefix maps an aws-sdk-go-v2 service package to its IAM action prefix.
// A service missing here fails the test: add it along with its policy.
var iamPrefix = map[string]string{
	"cloudwatchlogs": "logs",
	"kms":            "kms",
	"secretsmanager": "secretsmanager",
	"autoscaling":    "autoscaling",
	"ec2":            "ec2",
	"cloudformation": "cloudformation",
	"s3":             "s3",
	"ssm":            "ssm",
}

// configGated are actions the code can call but the deployed configuration
// never enables, so the template deliberately does not grant them. Each
// entry names the setting and is checked against the user data config.
var configGated = map[string]struct {
	why         string
	userDataHas string // a line the template's config must contain
}{
	"logs:CreateLogGroup": {
		why:         "logship creates the group only with logship.cloudwatch.create_group: true; the stack creates the group (with retention and class) itself",
		userDataHas: "create_group: false",
	},
	"logs:PutRetentionPolicy": {
		why:         "logship sets retention only on a group it created itself (create_group: true); the stack sets the group's retention",
		userDataHas: "create_group: false",
	},
}

const sdkServicePrefix = "github.com/aws/aws-sdk-go-v2/service/"

// sdkCall is one AWS operation found in the sources.
type sdkCall struct {
	service, op string
	where       string // first file:line seen
}

// findSDKCalls returns every AWS operation the non-test Go files under
// root's sourceRoots can invoke. An operation counts when the code names its
// input type (svc.<Op>Input: every call needs one, however the client is
// wrapped behind interfaces for fakes) or its paginator
// (svc.New<Op>Paginator). Waiters hide their operations and are reported
// as errors so this function never under-counts silently.
func findSDKCalls(root string) (map[string]sdkCall, []string, error) {
	calls := map[string]sdkCall{}
	var problems []string
	fset := token.NewFileSet()
	inputRE := regexp.MustCompile(`^([A-Z][A-Za-z0-9]*)Input$`)
	pagRE := regexp.MustCompile(`^New([A-Z][A-Za-z0-9]*)Paginator$`)
	waitRE := regexp.MustCompile(`^New[A-Z][A-Za-z0-9]*Waiter$`)
	for _, dir := range sourceRoots {
		base := filepath.Join(root, dir)
		if _, err := os.Stat(base); err != nil {
			continue
		}
		err := filepath.WalkDir(base, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") {
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			svcByName := map[string]string{} // local import name -> service
			for _, imp := range f.Imports {
				p, _ := strconv.Unquote(imp.Path.Value)
				svc, ok := strings.CutPrefix(p, sdkServicePrefix)
				if !ok || strings.Contains(svc, "/") { // skip .../service/x/types
					continue
				}
				name := svc
				if imp.Name != nil {
					name = imp.Name.Name
				}
				if name == "_" || name == "." {
					problems = append(problems, fmt.Sprintf("%s: %s imported as %q; name it so calls can be attributed", fset.Position(imp.Pos()), p, name))
					continue
				}
				svcByName[name] = svc
			}
			if len(svcByName) == 0 {
				return nil
			}
			ast.Inspect(f, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				id, ok := sel.X.(*ast.Ident)
				if !ok {
					return true
				}
				svc, ok := svcByName[id.Name]
				if !ok {
					return true
				}
				var op string
				if m := inputRE.FindStringSubmatch(sel.Sel.Name); m != nil {
					op = m[1]
				} else if m := pagRE.FindStringSubmatch(sel.Sel.Name); m != nil {
					op = m[1]
				} else if waitRE.MatchString(sel.Sel.Name) {
					problems = append(problems, fmt.Sprintf("%s: %s.%s hides its operations; extend findSDKCalls", fset.Position(sel.Pos()), svc, sel.Sel.Name))
					return true
				} else {
					return true
				}
				key := svc + "." + op
				if _, seen := calls[key]; !seen {
					calls[key] = sdkCall{service: svc, op: op, where: fset.Position(sel.Pos()).String()}
				}
				return true
			})
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
	}
	return calls, problems, nil
}

// sdkOperationExists confirms op is a real operation of the service version
// in go.mod (the SDK keeps one api_op_<Op>.go per operation), so a naming
// accident (say, a local type called FooInput) cannot pass as an AWS call.
func sdkOperationExists(t *testing.T, svc, op string) bool {
	t.Helper()
	dir := sdkModuleDir(t, svc)
	if dir == "" {
		return true // module not downloaded; the build would fail anyway
	}
	_, err := os.Stat(filepath.Join(dir, "api_op_"+op+".go"))
	return err == nil
}

func sdkModuleDir(t *testing.T, svc string) string {
	t.Helper()
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(sdkServicePrefix+svc) + `\s+(v\S+)`).FindSubmatch(gomod)
	if m == nil {
		return ""
	}
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		return ""
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "github.com", "aws", "aws-sdk-go-v2", "service", svc+"@"+string(m[1]))
	if _, err := os.Stat(dir); err != nil {
		return ""
	}
	return dir
}

// grantedActions returns the instance role's allowed actions (both
// branches of conditional statements) with problems found on the way:
// wildcards, unscoped resources, managed policies, other attached policies.
func grantedActions(tpl template, role string) (map[string]string, []string) {
	granted := map[string]string{} // action -> statement Sid
	var problems []string
	_, props := tpl.resource(role)
	if props == nil {
		return nil, []string{"no resource " + role}
	}
	if _, ok := props["ManagedPolicyArns"]; ok {
		problems = append(problems, role+": ManagedPolicyArns grant unknown actions")
	}
	for _, id := range tpl.resourcesOfType("AWS::IAM::Policy") {
		problems = append(problems, id+": separate AWS::IAM::Policy; keep the role's grants in one place")
	}
	pols, _ := props["Policies"].([]any)
	for _, p := range pols {
		pm, _ := p.(map[string]any)
		doc, _ := pm["PolicyDocument"].(map[string]any)
		stmts, _ := doc["Statement"].([]any)
		for _, s := range stmts {
			for _, st := range ifBranches(s) {
				sm, ok := st.(map[string]any)
				if !ok {
					problems = append(problems, fmt.Sprintf("statement %v is not a mapping", st))
					continue
				}
				sid, _ := sm["Sid"].(string)
				if sm["Effect"] != "Allow" {
					continue
				}
				if r, ok := sm["Resource"].(string); !ok || r == "*" {
					if _, isIntrinsic := sm["Resource"].(map[string]any); !isIntrinsic {
						if _, isList := sm["Resource"].([]any); !isList {
							problems = append(problems, fmt.Sprintf("statement %s: Resource %v is not scoped", sid, sm["Resource"]))
						}
					}
				}
				if _, ok := sm["NotAction"]; ok {
					problems = append(problems, "statement "+sid+": NotAction")
				}
				var acts []any
				switch a := sm["Action"].(type) {
				case string:
					acts = []any{a}
				case []any:
					acts = a
				}
				for _, a := range acts {
					s, _ := a.(string)
					if strings.Contains(s, "*") {
						problems = append(problems, fmt.Sprintf("statement %s: wildcard action %q", sid, s))
					}
					granted[s] = sid
				}
			}
		}
	}
	return granted, problems
}

// ifBranches returns the non-NoValue branches of a Fn::If, or v itself.
func ifBranches(v any) []any {
	fn, arg, ok := intrinsic(v)
	if !ok || fn != "Fn::If" {
		return []any{v}
	}
	l, _ := arg.([]any)
	var out []any
	for _, br := range l[1:] {
		if f, a, ok := intrinsic(br); ok && f == "Ref" && a == "AWS::NoValue" {
			continue
		}
		out = append(out, ifBranches(br)...)
	}
	return out
}

// instanceRole finds the role of the launch template's instance profile.
func instanceRole(t *testing.T, tpl template) string {
	t.Helper()
	for _, lt := range tpl.resourcesOfType("AWS::EC2::LaunchTemplate") {
		_, props := tpl.resource(lt)
		data, _ := props["LaunchTemplateData"].(map[string]any)
		ip, _ := data["IamInstanceProfile"].(map[string]any)
		fn, arg, _ := intrinsic(ip["Arn"])
		if fn != "Fn::GetAtt" {
			continue
		}
		profile, _ := arg.([]any)[0].(string)
		_, pprops := tpl.resource(profile)
		roles, _ := pprops["Roles"].([]any)
		if len(roles) == 1 {
			if f, a, ok := intrinsic(roles[0]); ok && f == "Ref" {
				return a.(string)
			}
		}
	}
	t.Fatal("no launch template with an instance profile of one role")
	return ""
}

// TestInstanceRoleExactActions compares the role's actions with the AWS
// operations the code invokes.
func TestInstanceRoleExactActions(t *testing.T) {
	tpl := mustTemplate(t)
	calls, problems, err := findSDKCalls("..")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	needed := map[string]string{} // action -> where
	for _, c := range calls {
		prefix, ok := iamPrefix[c.service]
		if !ok {
			t.Errorf("%s: calls %s.%s but the service has no IAM prefix in iamPrefix", c.where, c.service, c.op)
			continue
		}
		if !sdkOperationExists(t, c.service, c.op) {
			t.Errorf("%s: %s.%sInput is not an operation of the SDK's %s client", c.where, c.service, c.op, c.service)
			continue
		}
		needed[prefix+":"+c.op] = c.where
	}
	granted, gp := grantedActions(tpl, instanceRole(t, tpl))
	for _, p := range gp {
		t.Error(p)
	}
	userData := launchUserData(t, tpl)
	for _, a := range sortedKeys(needed) {
		if _, ok := granted[a]; ok {
			t.Logf("%-40s called at %s, granted by %s", a, needed[a], granted[a])
			continue
		}
		if g, ok := configGated[a]; ok {
			if !strings.Contains(userData, g.userDataHas) {
				t.Errorf("%s is not granted on the grounds that %s, but the user data config lacks %q", a, g.why, g.userDataHas)
			} else {
				t.Logf("%-40s called at %s, deliberately not granted: %s", a, needed[a], g.why)
			}
			continue
		}
		t.Errorf("%s is called at %s but the instance role does not grant it", a, needed[a])
	}
	for _, a := range sortedKeys(granted) {
		if _, ok := needed[a]; !ok {
			t.Errorf("instance role grants %s (statement %s) but no source under %v calls it", a, granted[a], sourceRoots)
		}
	}
	if len(needed) == 0 {
		t.Error("no AWS SDK calls found at all: the scanner is broken or the sources moved")
	}
}

// TestFindSDKCallsCatches runs the scanner on a synthetic tree.
func TestFindSDKCallsCatches(t *testing.T) {
	root := t.TempDir()
	write := func(rel, src string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("ca/kms.go", `package ca
import (
	"context"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)
type api interface{ Sign(context.Context, *awskms.SignInput, ...func(*awskms.Options)) (*awskms.SignOutput, error) }
func f(c api) { c.Sign(context.Background(), &awskms.SignInput{SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}) }
type notAWS struct{}
func (notAWS) Sign() {}
`)
	write("logship/pag.go", `package logship
import "github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
var _ = cloudwatchlogs.NewDescribeLogStreamsPaginator
`)
	write("logship/ship_test.go", `package logship
import "github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
var _ cloudwatchlogs.DeleteLogGroupInput
`)
	write("tunnel/testdata/x.go", `package x
import "github.com/aws/aws-sdk-go-v2/service/ec2"
var _ ec2.TerminateInstancesInput
`)
	write("cmd/w.go", `package main
import "github.com/aws/aws-sdk-go-v2/service/ec2"
var _ = ec2.NewInstanceRunningWaiter
`)
	write("other/x.go", `package other
import "github.com/aws/aws-sdk-go-v2/service/iam"
var _ iam.CreateUserInput
`)
	calls, problems, err := findSDKCalls(root)
	if err != nil {
		t.Fatal(err)
	}
	got := sortedKeys(calls)
	want := []string{"cloudwatchlogs.DescribeLogStreams", "kms.Sign"}
	if !slices.Equal(got, want) {
		t.Errorf("calls = %v, want %v (tests, testdata and dirs outside %v are not appliance code)", got, want, sourceRoots)
	}
	if len(problems) != 1 || !strings.Contains(problems[0], "NewInstanceRunningWaiter") {
		t.Errorf("problems = %q, want the waiter reported", problems)
	}
	if !sdkOperationExists(t, "kms", "Sign") || sdkOperationExists(t, "kms", "Frobnicate") {
		t.Error("sdkOperationExists does not tell real operations from made-up ones")
	}
}

// TestGrantedActionsCatches checks the policy reader flags over-broad grants.
func TestGrantedActionsCatches(t *testing.T) {
	src := `Resources:
  R:
    Type: AWS::IAM::Role
    Properties:
      ManagedPolicyArns: [arn:aws:iam::aws:policy/AdministratorAccess]
      Policies:
        - PolicyName: p
          PolicyDocument:
            Statement:
              - {Sid: a, Effect: Allow, Action: "logs:*", Resource: !Ref X}
              - {Sid: b, Effect: Allow, Action: [kms:Sign], Resource: "*"}
              - !If [C, {Sid: c, Effect: Allow, Action: ec2:ModifyInstanceAttribute, Resource: !Ref X}, !Ref AWS::NoValue]
  P:
    Type: AWS::IAM::Policy
`
	tpl, err := loadTemplate(writeTemp(t, src))
	if err != nil {
		t.Fatal(err)
	}
	granted, problems := grantedActions(tpl, "R")
	if got := sortedKeys(granted); !slices.Equal(got, []string{"ec2:ModifyInstanceAttribute", "kms:Sign", "logs:*"}) {
		t.Errorf("granted = %v", got)
	}
	joined := strings.Join(problems, "\n")
	for _, w := range []string{"ManagedPolicyArns", "separate AWS::IAM::Policy", "wildcard action", "not scoped"} {
		if !strings.Contains(joined, w) {
			t.Errorf("problems lack %q:\n%s", w, joined)
		}
	}
}
