package configs

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const templatePath = "cloudformation/gwlbproxy.yaml"

// cfnSpec is the part of the CloudFormation resource specification
// (@aws-cdk/cfnspec's spec/specification.json) the checks use.
type cfnSpec struct {
	ResourceSpecificationVersion string
	PropertyTypes                map[string]specPropType
	ResourceTypes                map[string]specResource
}

type specPropType struct {
	Properties map[string]specProp
	specProp   // some property types are just a primitive or a list
}

type specResource struct {
	Properties map[string]specProp
	Attributes map[string]json.RawMessage
}

type specProp struct {
	Required          bool
	PrimitiveType     string
	Type              string
	ItemType          string
	PrimitiveItemType string
}

// newerThanSpec lists properties CloudFormation gained after the
// specification the npm package ships (version 117, 2023), with their shape,
// so they are still checked rather than waved through.
var newerThanSpec = map[string]specProp{
	// LogGroupClass arrived with the Infrequent Access class (Nov 2023).
	"AWS::Logs::LogGroup.LogGroupClass": {PrimitiveType: "String"},
	// Listener attributes (GWLB's tcp.idle_timeout.seconds) arrived in 2024.
	"AWS::ElasticLoadBalancingV2::Listener.ListenerAttributes": {Type: "List", ItemType: "ListenerAttribute"},
}

// newerPropertyTypes are the property types newerThanSpec refers to.
var newerPropertyTypes = map[string]specPropType{
	"AWS::ElasticLoadBalancingV2::Listener.ListenerAttribute": {Properties: map[string]specProp{
		"Key":   {PrimitiveType: "String", Required: true},
		"Value": {PrimitiveType: "String", Required: true},
	}},
}

// newerValues restricts string properties of newerThanSpec to their
// documented values, so a typo is caught.
var newerValues = map[string][]string{
	"AWS::Logs::LogGroup.LogGroupClass":                           {"STANDARD", "INFREQUENT_ACCESS"},
	"AWS::ElasticLoadBalancingV2::Listener.ListenerAttribute.Key": {"tcp.idle_timeout.seconds", "send_tcp_reset.on_idle_timeout.enabled"},
}

var pseudoParams = map[string]bool{
	"AWS::AccountId": true, "AWS::NotificationARNs": true, "AWS::NoValue": true,
	"AWS::Partition": true, "AWS::Region": true, "AWS::StackId": true,
	"AWS::StackName": true, "AWS::URLSuffix": true,
}

// loadSpec reads the file named by $CFNSPEC or skips the test.
func loadSpec(t *testing.T) *cfnSpec {
	t.Helper()
	path := os.Getenv("CFNSPEC")
	if path == "" {
		t.Skip("CFNSPEC not set: point it at @aws-cdk/cfnspec's spec/specification.json (.ci/validate-configs.sh installs it)")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("CFNSPEC: %v", err)
	}
	var s cfnSpec
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("CFNSPEC %s: %v", path, err)
	}
	if len(s.ResourceTypes) < 100 {
		t.Fatalf("CFNSPEC %s: only %d resource types; not a resource specification", path, len(s.ResourceTypes))
	}
	t.Logf("CloudFormation resource specification %s (%d resource types)", s.ResourceSpecificationVersion, len(s.ResourceTypes))
	return &s
}

func mustTemplate(t *testing.T) template {
	t.Helper()
	tpl, err := loadTemplate(templatePath)
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

// TestTemplateAgainstSpec checks every resource type, property name,
// property shape and required property against the specification.
func TestTemplateAgainstSpec(t *testing.T) {
	spec := loadSpec(t)
	tpl := mustTemplate(t)
	c := &specChecker{spec: spec}
	c.template(tpl)
	for _, e := range c.errs {
		t.Error(e)
	}
	for k := range newerThanSpec {
		typ, prop, _ := strings.Cut(k, ".")
		if _, known := spec.ResourceTypes[typ].Properties[prop]; known {
			t.Logf("note: the specification now knows %s; drop it from newerThanSpec", k)
		}
	}
}

type specChecker struct {
	spec *cfnSpec
	errs []string
}

func (c *specChecker) errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

func (c *specChecker) template(tpl template) {
	for k := range tpl {
		switch k {
		case "AWSTemplateFormatVersion", "Description", "Metadata", "Parameters",
			"Mappings", "Conditions", "Transform", "Rules", "Resources", "Outputs":
		default:
			c.errorf("unknown top-level section %q", k)
		}
	}
	res := tpl.section("Resources")
	if len(res) == 0 {
		c.errorf("no Resources")
	}
	for _, id := range sortedKeys(res) {
		r, ok := res[id].(map[string]any)
		if !ok {
			c.errorf("Resources.%s: not a mapping", id)
			continue
		}
		for k := range r {
			switch k {
			case "Type", "Properties", "DependsOn", "Condition", "Metadata",
				"CreationPolicy", "UpdatePolicy", "DeletionPolicy", "UpdateReplacePolicy":
			default:
				c.errorf("Resources.%s: unknown resource attribute %q", id, k)
			}
		}
		typ, _ := r["Type"].(string)
		rs, ok := c.spec.ResourceTypes[typ]
		if !ok {
			c.errorf("Resources.%s: unknown resource type %q", id, typ)
			continue
		}
		props := map[string]any{}
		if p, has := r["Properties"]; has {
			if props, ok = p.(map[string]any); !ok {
				c.errorf("Resources.%s.Properties: not a mapping", id)
				continue
			}
		}
		c.properties("Resources."+id+".Properties", typ, typ, props, rs.Properties)
	}
	params := tpl.section("Parameters")
	for _, name := range sortedKeys(params) {
		p, _ := params[name].(map[string]any)
		if _, ok := p["Type"].(string); !ok {
			c.errorf("Parameters.%s: no Type", name)
		}
		if pat, ok := p["AllowedPattern"].(string); ok {
			re, err := regexp.Compile("^(?:" + pat + ")$") // CloudFormation matches the whole value
			if err != nil {
				c.errorf("Parameters.%s: AllowedPattern: %v", name, err)
			} else if d, has := p["Default"]; has && !re.MatchString(fmt.Sprint(d)) {
				c.errorf("Parameters.%s: Default %q does not match AllowedPattern", name, d)
			}
		}
		if d, has := p["Default"]; has {
			if av, ok := p["AllowedValues"].([]any); ok {
				if !slices.ContainsFunc(av, func(a any) bool { return fmt.Sprint(a) == fmt.Sprint(d) }) {
					c.errorf("Parameters.%s: Default %v not in AllowedValues", name, d)
				}
			}
		}
	}
}

// properties checks a property mapping of resource type rtype whose spec
// entries are specs; typName is used to resolve nested property types.
func (c *specChecker) properties(path, rtype, typName string, props map[string]any, specs map[string]specProp) {
	for _, name := range sortedKeys(props) {
		ps, ok := specs[name]
		if !ok {
			if nps, newer := newerThanSpec[typName+"."+name]; newer {
				c.value(path+"."+name, rtype, props[name], nps)
				c.allowed(path+"."+name, typName+"."+name, props[name])
				continue
			}
			c.errorf("%s: unknown property %q for %s", path, name, typName)
			continue
		}
		c.value(path+"."+name, rtype, props[name], ps)
		c.allowed(path+"."+name, typName+"."+name, props[name])
	}
	for _, name := range sortedKeys(specs) {
		if specs[name].Required {
			if _, ok := props[name]; !ok {
				c.errorf("%s: required property %q missing", path, name)
			}
		}
	}
}

// value checks one property value against its spec. Intrinsic functions
// are opaque except Fn::If, whose branches must both fit.
func (c *specChecker) value(path, rtype string, v any, ps specProp) {
	if fn, arg, ok := intrinsic(v); ok {
		if fn == "Fn::If" {
			if l, ok := arg.([]any); ok && len(l) == 3 {
				for i, br := range l[1:] {
					if f, a, ok := intrinsic(br); ok && f == "Ref" && a == "AWS::NoValue" {
						continue
					}
					c.value(fmt.Sprintf("%s(If branch %d)", path, i+1), rtype, br, ps)
				}
			}
		}
		return
	}
	switch {
	case ps.PrimitiveType != "":
		c.primitive(path, v, ps.PrimitiveType)
	case ps.Type == "List":
		l, ok := v.([]any)
		if !ok {
			c.errorf("%s: %T where a list is expected", path, v)
			return
		}
		for i, item := range l {
			c.item(fmt.Sprintf("%s[%d]", path, i), rtype, item, ps)
		}
	case ps.Type == "Map":
		m, ok := v.(map[string]any)
		if !ok {
			c.errorf("%s: %T where a map is expected", path, v)
			return
		}
		for _, k := range sortedKeys(m) {
			c.item(path+"."+k, rtype, m[k], ps)
		}
	case ps.Type != "":
		c.nested(path, rtype, ps.Type, v)
	}
}

// allowed checks a literal string against newerValues, if listed there.
func (c *specChecker) allowed(path, key string, v any) {
	vals, ok := newerValues[key]
	if !ok {
		return
	}
	if _, _, isFn := intrinsic(v); isFn {
		return
	}
	if s, isStr := v.(string); !isStr || !slices.Contains(vals, s) {
		c.errorf("%s: %v is not one of %v", path, v, vals)
	}
}

func (c *specChecker) item(path, rtype string, v any, ps specProp) {
	if ps.PrimitiveItemType != "" {
		c.value(path, rtype, v, specProp{PrimitiveType: ps.PrimitiveItemType})
		return
	}
	c.value(path, rtype, v, specProp{Type: ps.ItemType})
}

func (c *specChecker) nested(path, rtype, typ string, v any) {
	name := rtype + "." + typ
	pt, ok := c.spec.PropertyTypes[name]
	if !ok {
		pt, ok = newerPropertyTypes[name]
	}
	if !ok {
		name = typ // shared types such as "Tag"
		if pt, ok = c.spec.PropertyTypes[typ]; !ok {
			c.errorf("%s: specification has no property type %s", path, typ)
			return
		}
	}
	if pt.Properties == nil { // an alias of a primitive or a list
		c.value(path, rtype, v, pt.specProp)
		return
	}
	m, ok := v.(map[string]any)
	if !ok {
		c.errorf("%s: %T where %s (a mapping) is expected", path, v, typ)
		return
	}
	c.properties(path, rtype, name, m, pt.Properties)
}

func (c *specChecker) primitive(path string, v any, typ string) {
	switch v.(type) {
	case map[string]any, []any:
		if typ != "Json" {
			c.errorf("%s: %T where %s is expected", path, v, typ)
		}
		return
	}
	s := fmt.Sprint(v)
	var err error
	switch typ {
	case "Integer", "Long":
		_, err = strconv.ParseInt(s, 10, 64)
	case "Double":
		_, err = strconv.ParseFloat(s, 64)
	case "Boolean":
		_, err = strconv.ParseBool(s)
	case "Json":
		if _, isStr := v.(string); isStr && !json.Valid([]byte(s)) {
			err = fmt.Errorf("not JSON")
		}
	}
	if err != nil {
		c.errorf("%s: %q is not a valid %s", path, s, typ)
	}
}

// TestTemplateReferences checks that every Ref, GetAtt (and its attribute),
// Sub variable, condition and DependsOn target exists, and that every
// parameter and condition is used.
func TestTemplateReferences(t *testing.T) {
	spec := loadSpec(t)
	for _, e := range referenceErrors(spec, mustTemplate(t)) {
		t.Error(e)
	}
}

// referenceErrors implements TestTemplateReferences.
func referenceErrors(spec *cfnSpec, tpl template) []string {
	var errs []string
	errorf := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	params := tpl.section("Parameters")
	res := tpl.section("Resources")
	conds := tpl.section("Conditions")
	usedParam := map[string]bool{}
	usedCond := map[string]bool{}
	// A reference to a resource that has a Condition is legal only from a
	// resource or output with the same condition, or inside the then-branch
	// of an Fn::If on it (else CloudFormation rejects the template when the
	// condition is false). owner is the referrer's condition, guards the
	// enclosing Fn::If conditions.
	var owner string
	var guards []string
	condOf := func(name string) string {
		r, _ := res[name].(map[string]any)
		c, _ := r["Condition"].(string)
		return c
	}
	// implies reports whether condition a being true makes b true: a is b,
	// or an Fn::And with a conjunct implying b.
	var implies func(a, b string, depth int) bool
	implies = func(a, b string, depth int) bool {
		if a == b {
			return true
		}
		if fn, arg, ok := intrinsic(conds[a]); ok && fn == "Fn::And" && depth < 10 {
			l, _ := arg.([]any)
			for _, e := range l {
				if f, n, ok := intrinsic(e); ok && f == "Condition" && implies(n.(string), b, depth+1) {
					return true
				}
			}
		}
		return false
	}
	guarded := func(path, name string) {
		c := condOf(name)
		if c == "" || (owner != "" && implies(owner, c, 0)) ||
			slices.ContainsFunc(guards, func(g string) bool { return implies(g, c, 0) }) {
			return
		}
		errorf("%s: refers to %s, which exists only if %s, outside an Fn::If on it", path, name, c)
	}

	var walk func(path string, v any, inConditions bool)
	ref := func(path, name string, inConditions bool) {
		switch {
		case pseudoParams[name]:
		case params[name] != nil:
			usedParam[name] = true
		case res[name] != nil && !inConditions:
			guarded(path, name)
		default:
			errorf("%s: Ref to unknown %q", path, name)
		}
	}
	getAtt := func(path, resName, attr string) {
		r, _ := res[resName].(map[string]any)
		if r == nil {
			errorf("%s: GetAtt of unknown resource %q", path, resName)
			return
		}
		guarded(path, resName)
		typ, _ := r["Type"].(string)
		if _, ok := spec.ResourceTypes[typ].Attributes[attr]; !ok {
			errorf("%s: %s (%s) has no attribute %q", path, resName, typ, attr)
		}
	}
	cond := func(path, name string) {
		if conds[name] == nil {
			errorf("%s: unknown condition %q", path, name)
		}
		usedCond[name] = true
	}
	walk = func(path string, v any, inConditions bool) {
		if fn, arg, ok := intrinsic(v); ok {
			switch fn {
			case "Ref":
				s, _ := arg.(string)
				ref(path, s, inConditions)
				return
			case "Condition":
				s, _ := arg.(string)
				cond(path, s)
				return
			case "Fn::GetAtt":
				l, _ := arg.([]any)
				if len(l) != 2 {
					errorf("%s: Fn::GetAtt wants [resource, attribute], got %v", path, arg)
					return
				}
				r, _ := l[0].(string)
				a, _ := l[1].(string)
				getAtt(path, r, a)
				return
			case "Fn::If":
				l, _ := arg.([]any)
				if len(l) != 3 {
					errorf("%s: Fn::If wants 3 arguments, got %d", path, len(l))
					return
				}
				s, _ := l[0].(string)
				cond(path, s)
				guards = append(guards, s)
				walk(path+"(then)", l[1], inConditions)
				guards = guards[:len(guards)-1]
				walk(path+"(else)", l[2], inConditions)
				return
			case "Fn::Sub":
				var s string
				local := map[string]any{}
				switch a := arg.(type) {
				case string:
					s = a
				case []any:
					if len(a) == 2 {
						s, _ = a[0].(string)
						local, _ = a[1].(map[string]any)
						for k, lv := range local {
							walk(path+"(Sub var "+k+")", lv, inConditions)
						}
					}
				}
				vars, err := subVars(s)
				if err != nil {
					errorf("%s: %v", path, err)
				}
				for _, vr := range vars {
					if _, ok := local[vr]; ok {
						continue
					}
					if r, a, dotted := strings.Cut(vr, "."); dotted && !pseudoParams[vr] {
						getAtt(path, r, a)
					} else {
						ref(path, vr, inConditions)
					}
				}
				return
			case "Fn::FindInMap":
				l, _ := arg.([]any)
				if len(l) > 0 {
					if m, ok := l[0].(string); ok && tpl.section("Mappings")[m] == nil {
						errorf("%s: unknown mapping %q", path, m)
					}
				}
			}
			walk(path+"."+fn, arg, inConditions)
			return
		}
		switch x := v.(type) {
		case map[string]any:
			for _, k := range sortedKeys(x) {
				walk(path+"."+k, x[k], inConditions)
			}
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", path, i), e, inConditions)
			}
		}
	}

	for _, name := range sortedKeys(conds) {
		walk("Conditions."+name, conds[name], true)
	}
	for _, id := range sortedKeys(res) {
		r, _ := res[id].(map[string]any)
		owner = ""
		if cn, ok := r["Condition"].(string); ok {
			cond("Resources."+id+".Condition", cn)
			owner = cn
		}
		var deps []any
		switch d := r["DependsOn"].(type) {
		case string:
			deps = []any{d}
		case []any:
			deps = d
		}
		for _, e := range deps {
			s, _ := e.(string)
			if res[s] == nil {
				errorf("Resources.%s.DependsOn: unknown resource %v", id, e)
			} else if c := condOf(s); c != "" && (owner == "" || !implies(owner, c, 0)) {
				errorf("Resources.%s.DependsOn: %s exists only if %s (use a reference inside Fn::If instead)", id, s, c)
			}
		}
		// Fn::If is documented for Metadata, UpdatePolicy and property
		// values, not CreationPolicy.
		if cp, ok := r["CreationPolicy"]; ok && strings.Contains(fmt.Sprint(cp), "Fn::If") {
			errorf("Resources.%s.CreationPolicy: Fn::If is not supported there", id)
		}
		for _, k := range []string{"Properties", "UpdatePolicy", "CreationPolicy", "Metadata"} {
			if p, ok := r[k]; ok {
				walk("Resources."+id+"."+k, p, false)
			}
		}
	}
	outs := tpl.section("Outputs")
	for _, name := range sortedKeys(outs) {
		o, _ := outs[name].(map[string]any)
		if _, ok := o["Value"]; !ok {
			errorf("Outputs.%s: no Value", name)
		}
		owner = ""
		if cn, ok := o["Condition"].(string); ok {
			cond("Outputs."+name+".Condition", cn)
			owner = cn
		}
		walk("Outputs."+name, o, false)
	}
	for _, name := range sortedKeys(params) {
		if !usedParam[name] {
			errorf("Parameters.%s: never used", name)
		}
	}
	for _, name := range sortedKeys(conds) {
		if !usedCond[name] {
			errorf("Conditions.%s: never used", name)
		}
	}
	return errs
}

// TestLoaderShortForms pins the YAML short-form expansion the checks rely on.
func TestLoaderShortForms(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/t.yaml"
	src := `Resources:
  A:
    Type: X
    Properties:
      Ref: !Ref P
      Att: !GetAtt B.Arn.Dotted
      Sub: !Sub "${AWS::Region}-${B.Arn}-${!Literal}"
      SubList: !Sub ["${x}", {x: !Ref P}]
      If: !If [C, !Select [0, !GetAZs ""], !Ref "AWS::NoValue"]
      Join: !Join [",", !Split ["-", "a-b"]]
      B64: !Base64 {"Fn::Sub": "x"}
      Eq: !Equals [a, b]
      Cond: !Condition C
`
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	tpl, err := loadTemplate(path)
	if err != nil {
		t.Fatal(err)
	}
	_, props := tpl.resource("A")
	got, _ := json.Marshal(props)
	want := `{"Att":{"Fn::GetAtt":["B","Arn.Dotted"]},"B64":{"Fn::Base64":{"Fn::Sub":"x"}},"Cond":{"Condition":"C"},"Eq":{"Fn::Equals":["a","b"]},"If":{"Fn::If":["C",{"Fn::Select":[0,{"Fn::GetAZs":""}]},{"Ref":"AWS::NoValue"}]},"Join":{"Fn::Join":[",",{"Fn::Split":["-","a-b"]}]},"Ref":{"Ref":"P"},"Sub":{"Fn::Sub":"${AWS::Region}-${B.Arn}-${!Literal}"},"SubList":{"Fn::Sub":["${x}",{"x":{"Ref":"P"}}]}}`
	if string(got) != want {
		t.Errorf("expansion:\n got %s\nwant %s", got, want)
	}
	vars, err := subVars(props["Sub"].(map[string]any)["Fn::Sub"].(string))
	if err != nil || !slices.Equal(vars, []string{"AWS::Region", "B.Arn"}) {
		t.Errorf("subVars = %v, %v", vars, err)
	}
	if _, err := loadTemplate(writeTemp(t, "A: !Bogus x\n")); err == nil {
		t.Error("unknown tag accepted")
	}
	if _, err := loadTemplate(writeTemp(t, "A: 1\nA: 2\n")); err == nil {
		t.Error("duplicate key accepted")
	}
}

// TestSpecCheckerCatches feeds the checker broken resources, so a checker
// that silently accepts everything cannot pass.
func TestSpecCheckerCatches(t *testing.T) {
	spec := loadSpec(t)
	cases := map[string]string{
		"unknown type":        "Resources: {A: {Type: AWS::Nope::Thing}}",
		"unknown property":    "Resources: {A: {Type: AWS::KMS::Alias, Properties: {AliasName: a, TargetKeyId: k, Bogus: 1}}}",
		"missing required":    "Resources: {A: {Type: AWS::KMS::Alias, Properties: {AliasName: a}}}",
		"nested unknown":      "Resources: {A: {Type: AWS::EC2::LaunchTemplate, Properties: {LaunchTemplateData: {MetadataOptions: {HttpTokenz: required}}}}}",
		"nested required":     "Resources: {A: {Type: AWS::AutoScaling::AutoScalingGroup, Properties: {MinSize: '1', MaxSize: '1', LaunchTemplate: {LaunchTemplateId: x}}}}",
		"list item required":  "Resources: {A: {Type: AWS::AutoScaling::AutoScalingGroup, Properties: {MinSize: '1', MaxSize: '1', LifecycleHookSpecificationList: [{LifecycleHookName: h}]}}}",
		"bad integer":         "Resources: {A: {Type: AWS::Logs::LogGroup, Properties: {RetentionInDays: often}}}",
		"map for string":      "Resources: {A: {Type: AWS::Logs::LogGroup, Properties: {LogGroupName: {a: b}}}}",
		"scalar for list":     "Resources: {A: {Type: AWS::Logs::QueryDefinition, Properties: {Name: n, QueryString: q, LogGroupNames: g}}}",
		"bad If branch":       "Resources: {A: {Type: AWS::Logs::LogGroup, Properties: {RetentionInDays: !If [C, 7, soon]}}}",
		"newer prop bad":      "Resources: {A: {Type: AWS::Logs::LogGroup, Properties: {LogGroupClass: CHEAP}}}",
		"newer nested bad":    "Resources: {A: {Type: AWS::ElasticLoadBalancingV2::Listener, Properties: {LoadBalancerArn: a, DefaultActions: [], ListenerAttributes: [{Key: tcp.idle_timeout}]}}}",
		"newer shape bad":     "Resources: {A: {Type: AWS::ElasticLoadBalancingV2::Listener, Properties: {LoadBalancerArn: a, DefaultActions: [], ListenerAttributes: {Key: k}}}}",
		"bad resource attr":   "Resources: {A: {Type: AWS::Logs::LogGroup, DependOn: B}}",
		"default vs pattern":  "Parameters: {P: {Type: String, Default: x, AllowedPattern: '^[0-9]+$'}}\nResources: {A: {Type: AWS::Logs::LogGroup}}",
		"default not allowed": "Parameters: {P: {Type: String, Default: c, AllowedValues: [a, b]}}\nResources: {A: {Type: AWS::Logs::LogGroup}}",
	}
	for name, src := range cases {
		tpl, err := loadTemplate(writeTemp(t, src))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c := &specChecker{spec: spec}
		c.template(tpl)
		if len(c.errs) == 0 {
			t.Errorf("%s: no error reported", name)
		} else {
			t.Logf("%s: %s", name, c.errs[0])
		}
	}
	refCases := map[string]string{
		"unknown Ref":           "Resources: {A: {Type: AWS::KMS::Alias, Properties: {AliasName: !Ref Nope, TargetKeyId: k}}}",
		"unknown GetAtt":        "Resources: {A: {Type: AWS::KMS::Alias, Properties: {AliasName: !GetAtt Nope.Arn, TargetKeyId: k}}}",
		"bad attribute":         "Resources: {K: {Type: AWS::KMS::Key, Properties: {KeyPolicy: {}}}, A: {Type: AWS::KMS::Alias, Properties: {AliasName: a, TargetKeyId: !GetAtt K.Bogus}}}",
		"bad Sub var":           "Resources: {A: {Type: AWS::KMS::Alias, Properties: {AliasName: !Sub 'alias/${Nope}', TargetKeyId: k}}}",
		"bad Sub attribute":     "Resources: {K: {Type: AWS::KMS::Key, Properties: {KeyPolicy: {}}}, A: {Type: AWS::KMS::Alias, Properties: {AliasName: !Sub '${K.Bogus}', TargetKeyId: k}}}",
		"unknown condition":     "Resources: {A: {Type: AWS::KMS::Alias, Condition: Nope, Properties: {AliasName: a, TargetKeyId: k}}}",
		"unknown If cond":       "Resources: {A: {Type: AWS::KMS::Alias, Properties: {AliasName: !If [Nope, a, b], TargetKeyId: k}}}",
		"unused parameter":      "Parameters: {P: {Type: String}}\nResources: {A: {Type: AWS::KMS::Alias, Properties: {AliasName: a, TargetKeyId: k}}}",
		"resource in condition": "Conditions: {C: !Equals [!Ref A, x]}\nResources: {A: {Type: AWS::KMS::Alias, Condition: C, Properties: {AliasName: a, TargetKeyId: k}}}",
		"bad DependsOn":         "Resources: {A: {Type: AWS::KMS::Alias, DependsOn: Nope, Properties: {AliasName: a, TargetKeyId: k}}}",
		"unguarded cond Ref":    "Conditions: {C: !Equals [a, b]}\nResources: {K: {Type: AWS::KMS::Key, Condition: C, Properties: {KeyPolicy: {}}}, A: {Type: AWS::KMS::Alias, Properties: {AliasName: a, TargetKeyId: !Ref K}}}",
		"unguarded cond GetAtt": "Conditions: {C: !Equals [a, b]}\nResources: {K: {Type: AWS::KMS::Key, Condition: C, Properties: {KeyPolicy: {}}}, A: {Type: AWS::KMS::Alias, Properties: {AliasName: a, TargetKeyId: !If [C, k, !GetAtt K.Arn]}}}",
		"unguarded cond output": "Conditions: {C: !Equals [a, b]}\nResources: {K: {Type: AWS::KMS::Key, Condition: C, Properties: {KeyPolicy: {}}}}\nOutputs: {O: {Value: !Ref K}}",
		"DependsOn conditional": "Conditions: {C: !Equals [a, b]}\nResources: {K: {Type: AWS::KMS::Key, Condition: C, Properties: {KeyPolicy: {}}}, A: {Type: AWS::KMS::Alias, DependsOn: K, Properties: {AliasName: a, TargetKeyId: k}}}",
		"implication reversed":  "Conditions: {C: !Equals [a, b], D: !Equals [c, d], CD: !And [!Condition C, !Condition D]}\nResources: {K: {Type: AWS::KMS::Key, Condition: CD, Properties: {KeyPolicy: {}}}, A: {Type: AWS::KMS::Alias, Condition: C, Properties: {AliasName: a, TargetKeyId: !Ref K}}}",
		"If in CreationPolicy":  "Conditions: {C: !Equals [a, b]}\nResources: {A: {Type: AWS::KMS::Alias, CreationPolicy: {ResourceSignal: {Count: !If [C, 1, 0]}}, Properties: {AliasName: a, TargetKeyId: k}}}",
	}
	guardedOK := "Conditions: {C: !Equals [a, b]}\nResources: {K: {Type: AWS::KMS::Key, Condition: C, Properties: {KeyPolicy: {}}}, A: {Type: AWS::KMS::Alias, Properties: {AliasName: a, TargetKeyId: !If [C, !GetAtt K.Arn, k]}}, B: {Type: AWS::KMS::Alias, Condition: C, Properties: {AliasName: b, TargetKeyId: !Ref K}}}\nOutputs: {O: {Condition: C, Value: !Ref K}}"
	if tpl, err := loadTemplate(writeTemp(t, guardedOK)); err != nil {
		t.Fatal(err)
	} else if errs := referenceErrors(spec, tpl); len(errs) != 0 {
		t.Errorf("guarded references to a conditional resource reported: %q", errs)
	}
	for name, src := range refCases {
		tpl, err := loadTemplate(writeTemp(t, src))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if errs := referenceErrors(spec, tpl); len(errs) == 0 {
			t.Errorf("%s: no error reported", name)
		} else {
			t.Logf("%s: %s", name, errs[0])
		}
	}
	ok := "Resources: {A: {Type: AWS::Logs::LogGroup, Properties: {LogGroupClass: STANDARD, RetentionInDays: !If [C, 7, !Ref AWS::NoValue], Tags: [{Key: k, Value: v}]}}}"
	tpl, err := loadTemplate(writeTemp(t, ok))
	if err != nil {
		t.Fatal(err)
	}
	c := &specChecker{spec: spec}
	c.template(tpl)
	if len(c.errs) != 0 {
		t.Errorf("valid template rejected: %v", c.errs)
	}
}

func writeTemp(t *testing.T, src string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(src); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
