// Package schema is the part of the proxy's request record that other
// packages depend on: the JSON names of the fields they read and the typed
// values logship's EMF aggregates. proxy.Record writes its JSON with these
// names and hands Metrics beside the bytes (proxy.Recorder); logship
// imports this package and reads Metrics, never the JSON, so a renamed or
// retyped field breaks the build instead of silently zeroing a metric.
//
// It imports nothing, so both sides can import it without a cycle.
package schema

// JSON keys of the request record that are read outside the proxy (the
// CloudWatch Logs Insights queries and the dashboard read them too).
const (
	KeyAction     = "action"
	KeyStatus     = "status"
	KeyDurationMS = "duration_ms"
)

// Metrics are the values of one request record that the per-request
// metrics (logship's EMF: requests, status classes, latency sums) count.
// Passed by value: handing them over allocates nothing.
type Metrics struct {
	// Action is the record's action: allow, deny, splice, error...
	Action string
	// Status is the HTTP status; 0 when the record has none (a denied or
	// spliced TLS connection).
	Status int
	// DurationMS is the record's duration_ms.
	DurationMS float64
}
