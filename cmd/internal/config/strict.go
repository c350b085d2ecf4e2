// Package config loads gwlbproxy's YAML configuration.
//
// Decoding is strict and field-aware: every error names the offending key by
// its full path (for example "tunnel.mtu"), so an operator gets one line that
// says what to fix. yaml.v3's own KnownFields mode reports Go type names and
// several lines at once, which is why the walk over the node tree is ours.
package config

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"
)

// FieldError is a configuration error tied to one key.
type FieldError struct {
	Path string // dotted key path, e.g. "proxy.rules[2].action"
	Line int    // line in the YAML file, 0 when unknown
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s (line %d): %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Msg)
}

var (
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	durationType        = reflect.TypeFor[time.Duration]()
)

// decodeStrict decodes data into out (a pointer to a struct) over the
// defaults already in out. Unknown keys, duplicate keys, wrong types and
// non-scalar values for scalar fields are errors naming the key.
func decodeStrict(data []byte, out any) error {
	root, err := parseDoc(data)
	if err != nil || root == nil {
		return err
	}
	return walk(root, reflect.ValueOf(out).Elem(), "")
}

// parseDoc parses data into its root node; nil for an empty document.
func parseDoc(data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("yaml: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if doc.Kind == 0 { // empty file
		return nil, nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, errors.New("yaml: expected one document")
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, nil
	}
	return root, nil
}

func join(path, key string) string {
	if strings.ContainsFunc(key, func(r rune) bool { return r == '.' || r == '"' || !unicode.IsPrint(r) }) {
		key = strconv.Quote(key) // a key with a newline must not break the one-line error
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// oneLine keeps an error on one line however odd the input it quotes:
// control characters are escaped. Unwrap keeps errors.As working.
type oneLine struct{ err error }

func (e oneLine) Error() string {
	msg := e.err.Error()
	if !strings.ContainsFunc(msg, unicode.IsControl) {
		return msg
	}
	q := strconv.Quote(msg)
	return q[1 : len(q)-1]
}

func (e oneLine) Unwrap() error { return e.err }

func walk(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // keep the default
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return walk(n, v.Elem(), path)
	}
	if v.CanAddr() && v.Addr().Type().Implements(textUnmarshalerType) || v.Type() == durationType {
		return scalar(n, v, path)
	}
	switch v.Kind() {
	case reflect.Struct:
		return walkStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return &FieldError{path, n.Line, "expected a list"}
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			if err := walk(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return &FieldError{path, n.Line, "expected a mapping"}
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			kv := reflect.New(v.Type().Key()).Elem()
			if err := scalar(k, kv, path); err != nil {
				return err
			}
			ev := reflect.New(v.Type().Elem()).Elem()
			if err := walk(val, ev, join(path, k.Value)); err != nil {
				return err
			}
			v.SetMapIndex(kv, ev)
		}
		return nil
	default:
		return scalar(n, v, path)
	}
}

func walkStruct(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind != yaml.MappingNode {
		return &FieldError{path, n.Line, "expected a mapping of keys"}
	}
	fields := fieldIndex(v.Type())
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		p := join(path, k.Value)
		if seen[k.Value] {
			return &FieldError{p, k.Line, "duplicate key"}
		}
		seen[k.Value] = true
		idx, ok := fields[k.Value]
		if !ok {
			return &FieldError{p, k.Line, "unknown key" + suggest(k.Value, fields)}
		}
		if err := walk(val, v.FieldByIndex(idx), p); err != nil {
			return err
		}
	}
	return nil
}

// fieldIndex maps yaml keys to struct fields, descending into fields
// tagged `yaml:",inline"`.
func fieldIndex(t reflect.Type) map[string][]int {
	m := make(map[string][]int)
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(opts, "inline") && f.Type.Kind() == reflect.Struct {
			for k, sub := range fieldIndex(f.Type) {
				m[k] = append([]int{i}, sub...)
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = []int{i}
	}
	return m
}

// suggest names a known key that differs from an unknown one only in case,
// dashes or underscores: the commonest typo in hand-written YAML.
func suggest(key string, fields map[string][]int) string {
	norm := func(s string) string {
		return strings.NewReplacer("-", "", "_", "").Replace(strings.ToLower(s))
	}
	for k := range fields {
		if norm(k) == norm(key) {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
	}
	return ""
}

func scalar(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind != yaml.ScalarNode {
		return &FieldError{path, n.Line, fmt.Sprintf("expected a single value (%s)", typeName(v.Type()))}
	}
	p := reflect.New(v.Type())
	if err := n.Decode(p.Interface()); err != nil {
		msg := err.Error()
		if te, ok := err.(*yaml.TypeError); ok && len(te.Errors) > 0 {
			msg = te.Errors[0]
			if _, after, ok := strings.Cut(msg, ": "); ok && strings.HasPrefix(msg, "line ") {
				msg = after
			}
		}
		if strings.Contains(msg, "cannot unmarshal") {
			msg = fmt.Sprintf("cannot use %q as %s", n.Value, typeName(v.Type()))
			if isInt(v.Kind()) && n.Tag == "!!int" {
				msg = fmt.Sprintf("%s is out of range for %s", n.Value, typeName(v.Type()))
			}
		}
		return &FieldError{path, n.Line, msg}
	}
	v.Set(p.Elem())
	return nil
}

func isInt(k reflect.Kind) bool {
	return k >= reflect.Int && k <= reflect.Uint64
}

func typeName(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration like 30s"
	case t.String() == "netip.Prefix":
		return "a CIDR like 10.0.0.0/16"
	case t.String() == "netip.Addr":
		return "an IP address"
	case t.String() == "netip.AddrPort":
		return "an address:port"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return fmt.Sprintf("an integer (%d bits)", t.Bits())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return fmt.Sprintf("an integer 0..%d", uint64(1)<<t.Bits()-1)
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	}
	return t.String()
}
