package configs

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestFleetPolicySource checks issue 18's wiring: the user data config
// points proxy.policy.source at the object (or parameter) the stack makes,
// and the instance role may read exactly that object or parameter.
func TestFleetPolicySource(t *testing.T) {
	tpl := mustTemplate(t)
	_, sub := userDataSub(t, tpl)
	rendered, err := subString(sub, sampleValue(t))
	if err != nil {
		t.Fatal(err)
	}
	var cc struct {
		WriteFiles []struct{ Path, Content string } `yaml:"write_files"`
	}
	if err := yaml.Unmarshal([]byte(rendered), &cc); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Proxy struct {
			Policy struct {
				Source string
				S3     struct{ Bucket, Key string }
				SSM    struct{ Parameter string }
				Region string
				Poll   string `yaml:"poll_interval"`
				Last   string `yaml:"last_good"`
			}
		}
	}
	for _, f := range cc.WriteFiles {
		if f.Path == configPath {
			if err := yaml.Unmarshal([]byte(f.Content), &cfg); err != nil {
				t.Fatal(err)
			}
		}
	}
	pc := cfg.Proxy.Policy
	if pc.Source != "s3" || pc.S3.Bucket != sampleParams["PolicyBucket"] || pc.S3.Key != sampleParams["PolicyObjectKey"] ||
		pc.Region != sampleParams["AWS::Region"] || pc.Poll != "60s" || !strings.HasPrefix(pc.Last, "/var/lib/gwlbproxy/") {
		t.Fatalf("proxy.policy in the user data: %+v", pc)
	}

	// The grants: exactly the object and the parameter.
	_, role := tpl.resource(instanceRole(t, tpl))
	stmts := map[string]map[string]any{}
	for _, p := range role["Policies"].([]any) {
		doc := p.(map[string]any)["PolicyDocument"].(map[string]any)
		for _, s := range doc["Statement"].([]any) {
			for _, st := range ifBranches(s) {
				if m, ok := st.(map[string]any); ok {
					sid, _ := m["Sid"].(string)
					stmts[sid] = m
				}
			}
		}
	}
	resource := func(sid string) string {
		st := stmts[sid]
		if st == nil {
			t.Fatalf("no statement %s", sid)
		}
		fn, arg, ok := intrinsic(st["Resource"])
		if !ok || fn != "Fn::Sub" {
			t.Fatalf("%s: Resource %v is not a Fn::Sub", sid, st["Resource"])
		}
		r, err := subString(arg, sampleValue(t))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if got, want := resource("ReadFleetPolicyObject"), "arn:aws:s3:::"+pc.S3.Bucket+"/"+pc.S3.Key; got != want {
		t.Errorf("s3:GetObject on %s, want exactly %s", got, want)
	}
	if a := stmts["ReadFleetPolicyObject"]["Action"]; a != "s3:GetObject" {
		t.Errorf("object statement actions %v", a)
	}
	_, param := tpl.resource("PolicyParameter")
	fn, arg, _ := intrinsic(param["Name"])
	if fn != "Fn::Sub" {
		t.Fatalf("PolicyParameter Name %v", param["Name"])
	}
	name, err := subString(arg, sampleValue(t))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := resource("ReadFleetPolicyParameter"), "arn:aws:ssm:eu-west-1:123456789012:parameter"+name; got != want {
		t.Errorf("ssm:GetParameter on %s, want exactly %s", got, want)
	}
	if param["Type"] != "String" {
		t.Errorf("parameter type %v: a SecureString would need kms:Decrypt too", param["Type"])
	}
	if v, _ := param["Value"].(string); !strings.Contains(v, "default_action: deny") {
		t.Errorf("initial parameter value %q is not deny-all", v)
	}
	_, bucket := tpl.resource("PolicyBucket")
	if !strings.Contains(strings.ToLower(yamlString(t, bucket["VersioningConfiguration"])), "enabled") {
		t.Errorf("policy bucket not versioned: %v", bucket["VersioningConfiguration"])
	}
}

func yamlString(t *testing.T, v any) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
