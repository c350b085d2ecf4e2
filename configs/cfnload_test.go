package configs

import (
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// A CloudFormation template decoded into plain Go values, the way
// CloudFormation itself sees it: maps, lists, scalars, and intrinsic
// functions in their long form ({"Ref": x}, {"Fn::GetAtt": [r, a]}, ...),
// whichever YAML spelling (short !Tag or long) the file used.
type template map[string]any

// shortForms maps YAML short-form tags to their long-form keys.
var shortForms = map[string]string{
	"!Ref":          "Ref",
	"!Condition":    "Condition",
	"!Base64":       "Fn::Base64",
	"!Cidr":         "Fn::Cidr",
	"!FindInMap":    "Fn::FindInMap",
	"!GetAtt":       "Fn::GetAtt",
	"!GetAZs":       "Fn::GetAZs",
	"!ImportValue":  "Fn::ImportValue",
	"!Join":         "Fn::Join",
	"!Select":       "Fn::Select",
	"!Split":        "Fn::Split",
	"!Sub":          "Fn::Sub",
	"!Transform":    "Fn::Transform",
	"!And":          "Fn::And",
	"!Equals":       "Fn::Equals",
	"!If":           "Fn::If",
	"!Not":          "Fn::Not",
	"!Or":           "Fn::Or",
	"!Length":       "Fn::Length",
	"!ToJsonString": "Fn::ToJsonString",
}

func loadTemplate(path string) (template, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	v, err := cfnValue(&doc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: top level is %T, want a mapping", path, v)
	}
	return template(m), nil
}

// cfnValue converts a yaml.Node tree, expanding short-form intrinsics.
func cfnValue(n *yaml.Node) (any, error) {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) != 1 {
			return nil, fmt.Errorf("line %d: want exactly one document", n.Line)
		}
		return cfnValue(n.Content[0])
	case yaml.AliasNode:
		return cfnValue(n.Alias)
	}
	if strings.HasPrefix(n.Tag, "!") && !strings.HasPrefix(n.Tag, "!!") {
		key, ok := shortForms[n.Tag]
		if !ok {
			return nil, fmt.Errorf("line %d: unknown tag %s", n.Line, n.Tag)
		}
		var arg any
		if n.Kind == yaml.ScalarNode {
			arg = n.Value
			if key == "Fn::GetAtt" { // !GetAtt Res.Attr.Maybe.Dotted
				res, attr, ok := strings.Cut(n.Value, ".")
				if !ok {
					return nil, fmt.Errorf("line %d: !GetAtt %q is not Resource.Attribute", n.Line, n.Value)
				}
				arg = []any{res, attr}
			}
		} else {
			plain := *n
			plain.Tag = ""
			var err error
			if arg, err = cfnValue(&plain); err != nil {
				return nil, err
			}
		}
		return map[string]any{key: arg}, nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: non-scalar key", k.Line)
			}
			if k.Value == "<<" {
				return nil, fmt.Errorf("line %d: merge keys are not CloudFormation", k.Line)
			}
			if _, dup := m[k.Value]; dup {
				return nil, fmt.Errorf("line %d: duplicate key %q", k.Line, k.Value)
			}
			v, err := cfnValue(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			m[k.Value] = v
		}
		return m, nil
	case yaml.SequenceNode:
		l := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := cfnValue(c)
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		}
		return l, nil
	case yaml.ScalarNode:
		var v any
		if err := n.Decode(&v); err != nil {
			return nil, fmt.Errorf("line %d: %w", n.Line, err)
		}
		return v, nil
	}
	return nil, fmt.Errorf("line %d: unexpected node kind %d", n.Line, n.Kind)
}

// intrinsic reports whether v is a single-key intrinsic function call and
// returns its name and argument.
func intrinsic(v any) (name string, arg any, ok bool) {
	m, isMap := v.(map[string]any)
	if !isMap || len(m) != 1 {
		return "", nil, false
	}
	for k, a := range m {
		if k == "Ref" || k == "Condition" || strings.HasPrefix(k, "Fn::") {
			return k, a, true
		}
	}
	return "", nil, false
}

// section returns a top-level mapping such as "Resources".
func (t template) section(name string) map[string]any {
	m, _ := t[name].(map[string]any)
	return m
}

// resource returns the named resource's Type and Properties.
func (t template) resource(name string) (typ string, props map[string]any) {
	r, _ := t.section("Resources")[name].(map[string]any)
	typ, _ = r["Type"].(string)
	props, _ = r["Properties"].(map[string]any)
	return typ, props
}

// resourcesOfType lists the logical ids of every resource of type typ.
func (t template) resourcesOfType(typ string) []string {
	var ids []string
	for id := range t.section("Resources") {
		if rt, _ := t.resource(id); rt == typ {
			ids = append(ids, id)
		}
	}
	return ids
}

// paramDefault returns a parameter's Default as a string.
func (t template) paramDefault(name string) (string, bool) {
	p, _ := t.section("Parameters")[name].(map[string]any)
	d, ok := p["Default"]
	if !ok {
		return "", false
	}
	return fmt.Sprint(d), true
}

// subVars lists the ${...} references in a Fn::Sub string, skipping ${!...}
// literals.
func subVars(s string) ([]string, error) {
	var vars []string
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			return vars, nil
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("unterminated ${ in %q", s[i:])
		}
		v := s[i+2 : i+j]
		if !strings.HasPrefix(v, "!") {
			vars = append(vars, strings.TrimSpace(v))
		}
		s = s[i+j+1:]
	}
}

// subString resolves a Fn::Sub argument to its template string with every
// ${Var} replaced by value(Var); literal ${!X} becomes ${X}.
func subString(arg any, value func(string) string) (string, error) {
	var s string
	local := map[string]any{}
	switch a := arg.(type) {
	case string:
		s = a
	case []any:
		if len(a) != 2 {
			return "", fmt.Errorf("Fn::Sub list has %d elements, want 2", len(a))
		}
		var ok bool
		if s, ok = a[0].(string); !ok {
			return "", fmt.Errorf("Fn::Sub string is %T", a[0])
		}
		if local, ok = a[1].(map[string]any); !ok {
			return "", fmt.Errorf("Fn::Sub variables are %T", a[1])
		}
	default:
		return "", fmt.Errorf("Fn::Sub argument is %T", arg)
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("unterminated ${")
		}
		b.WriteString(s[:i])
		v := s[i+2 : i+j]
		switch {
		case strings.HasPrefix(v, "!"):
			b.WriteString("${" + v[1:] + "}")
		default:
			if _, ok := local[v]; ok {
				b.WriteString(value("local:" + v))
			} else {
				b.WriteString(value(v))
			}
		}
		s = s[i+j+1:]
	}
}
