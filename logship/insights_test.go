package logship

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship/evetail"
	"github.com/gwlbproxy/gwlbproxy/proxy"
	"github.com/gwlbproxy/gwlbproxy/tunnel/flowlog"
)

// insightsWords are Logs Insights command names, operators and keywords:
// identifiers that are not field references.
var insightsWords = map[string]bool{
	"fields": true, "filter": true, "stats": true, "sort": true, "limit": true, "dedup": true,
	"display": true, "parse": true, "unmask": true, "pattern": true, "diff": true,
	"and": true, "or": true, "not": true, "in": true, "like": true, "by": true, "as": true,
	"asc": true, "desc": true, "true": true, "false": true, "null": true,
}

var insightsToken = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|/(?:[^/\\]|\\.)+/|@?[A-Za-z_][A-Za-z0-9_.]*|[0-9][0-9.]*[A-Za-z]*|\S`)

// fieldRefs returns the record fields a query reads: identifiers that are
// not keywords, functions (followed by "("), aliases (after "as", and their
// later uses), @-fields, literals or durations.
func fieldRefs(query string) []string {
	var lines []string
	for _, l := range strings.Split(query, "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
			lines = append(lines, l)
		}
	}
	toks := insightsToken.FindAllString(strings.Join(lines, "\n"), -1)
	aliases := map[string]bool{}
	for i := 1; i < len(toks); i++ {
		if strings.EqualFold(toks[i-1], "as") {
			aliases[toks[i]] = true
		}
	}
	var refs []string
	for i, t := range toks {
		c := t[0]
		switch {
		case c == '"' || c == '\'' || c == '/' || c == '@' || (c >= '0' && c <= '9'):
			continue
		case !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'):
			continue
		case insightsWords[strings.ToLower(t)] || aliases[t]:
			continue
		case i+1 < len(toks) && toks[i+1] == "(":
			continue // function
		}
		refs = append(refs, t)
	}
	return refs
}

func TestInsightsQueriesReferenceRecordFields(t *testing.T) {
	// The record exactly as the proxy encodes it.
	r := proxy.Record{
		Time: time.Now(), RecordID: "r1", InstanceID: "i-1", EndpointID: "vpce-0123456789abcdef0",
		ClientIP: "10.0.0.1", ClientPort: 40000, DstIP: "203.0.113.1", DstPort: 443, SNI: "a.example",
		Host: "a.example", Method: "GET", Scheme: "https", Path: "/", Status: 200, Action: "allow",
		Rule: "r", BytesIn: 1, BytesOut: 2, DurationMS: 1.5, TLSVersion: "TLS1.3", ALPN: "h2",
		UpstreamError: "x509: certificate signed by unknown authority", UserAgent: "ua",
	}
	var fromProxy map[string]any
	if err := json.Unmarshal(r.AppendJSON(nil, 1024), &fromProxy); err != nil {
		t.Fatal(err)
	}
	// issue 19: the same log group holds Suricata's ids_alert records.
	alert, err := evetail.AlertRecord([]byte(`{"timestamp":"2026-12-07T20:25:25.427045+0000","flow_id":1,"event_type":"alert","src_ip":"203.0.113.1","src_port":443,"dest_ip":"10.0.0.1","dest_port":40000,"proto":"TCP","direction":"to_client","alert":{"action":"allowed","signature_id":1,"rev":1,"signature":"s","category":"","severity":3},"http":{"hostname":"a.example","url":"/"},"app_proto":"http"}`), "i-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(alert, &fromProxy); err != nil { // adds its fields
		t.Fatal(err)
	}
	// And the field list of the contract (the two must agree).
	var fromContract map[string]any
	if err := json.Unmarshal(sampleRecord(1, time.Now()), &fromContract); err != nil {
		t.Fatal(err)
	}
	for k := range fromContract {
		if _, ok := fromProxy[k]; !ok {
			t.Errorf("contract field %q missing from proxy.Record JSON", k)
		}
	}

	// Flow records (tunnel/flowlog, issue 15) go to the same log group.
	for _, k := range append(append([]string(nil), flowlog.RecordFields...), flowlog.SummaryFields...) {
		fromProxy[k] = true
	}

	files, err := filepath.Glob("../configs/insights/*.cwli")
	if err != nil || len(files) < 5 {
		t.Fatalf("expected at least 5 saved queries, found %d (%v)", len(files), err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		q := string(data)
		if !strings.HasPrefix(q, "# ") {
			t.Errorf("%s: start with a '# ' comment saying what the query answers", f)
		}
		refs := fieldRefs(q)
		if len(refs) == 0 {
			t.Errorf("%s: references no record field", f)
		}
		for _, ref := range refs {
			if _, ok := fromProxy[ref]; !ok {
				t.Errorf("%s: field %q is not in the proxy's record", filepath.Base(f), ref)
			}
		}
	}
}

func TestFieldRefsParser(t *testing.T) {
	got := fieldRefs("# c\nfilter a = \"x y\" and b like /c|d/\n| fields coalesce(e, f) as g\n| stats pct(h, 99) as p by bin(5m), g\n| sort p desc")
	if strings.Join(got, ",") != "a,b,e,f,h" {
		t.Fatalf("refs %v", got)
	}
}

// TestInsightsQueriesCountExactlyAndSkipEMF: the saved queries share the
// log group with logship's EMF records, and their numbers must be exact.
// count_distinct is approximate in Logs Insights, so counting is count(*);
// and every query's first filter must require a field the EMF records lack
// (an EMF record carries action = "deny" too, and would be counted).
func TestInsightsQueriesCountExactlyAndSkipEMF(t *testing.T) {
	e := newEMF(EMFConfig{Namespace: "gwlbproxy"}, "i-1")
	e.observe(sampleMetrics(1))
	emfFields := map[string]bool{}
	for _, rec := range e.flush(time.Now(), time.Second) {
		var m map[string]any
		if err := json.Unmarshal(rec, &m); err != nil {
			t.Fatal(err)
		}
		for k := range m {
			emfFields[k] = true
		}
	}
	files, _ := filepath.Glob("../configs/insights/*.cwli")
	if len(files) == 0 {
		t.Fatal("no saved queries")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var body []string
		for _, l := range strings.Split(string(data), "\n") {
			if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
				body = append(body, t)
			}
		}
		q := strings.Join(body, "\n")
		if strings.Contains(q, "count_distinct(") {
			t.Errorf("%s: count_distinct is approximate in Logs Insights; count with count(*)", filepath.Base(f))
		}
		if !strings.HasPrefix(q, "filter ") {
			t.Errorf("%s: does not start with a filter that excludes the EMF records", filepath.Base(f))
			continue
		}
		first := strings.SplitN(strings.TrimPrefix(body[0], "filter "), "|", 2)[0]
		excludes := false
		for _, conj := range strings.Split(first, " and ") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(conj), "record_type = "); ok && strings.Trim(v, `"`) != "emf" {
				excludes = true // pinned to a record type other than the EMF records' own
				continue
			}
			if strings.Contains(conj, "!=") || strings.Contains(conj, " or ") || strings.HasPrefix(strings.TrimSpace(conj), "not ") {
				continue // a negation or alternative also matches records lacking the field
			}
			for _, ref := range fieldRefs(conj) {
				if !emfFields[ref] {
					excludes = true
				}
			}
			// record_type = "flow" (any value but the EMF records' own)
			// excludes them too: they all carry record_type "emf".
			if m := recordTypeEq.FindStringSubmatch(conj); m != nil && m[1] != "emf" {
				excludes = true
			}
		}
		if !excludes {
			t.Errorf("%s: first filter %q also matches the EMF records (fields %v)", filepath.Base(f), first, sortedFieldNames(emfFields))
		}
	}
}

var recordTypeEq = regexp.MustCompile(`^\s*record_type\s*=\s*"([^"]*)"\s*$`)

func sortedFieldNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
