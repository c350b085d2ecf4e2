//go:build linux

// Package flowlog writes one JSON record per forwarded flow: everything
// from the tunnels that the proxy does not intercept, allowed or denied by
// the network policy (tunnel/steer). The proxy writes the records of what
// it intercepts; together they answer "what left this VPC, to where, how
// much".
//
// Sources, both netlink, both read without blocking the data path (the
// kernel never waits for a multicast listener):
//
//   - conntrack destroy events (NFNLGRP_CONNTRACK_DESTROY) with accounting
//     and timestamps on (net.netfilter.nf_conntrack_acct and
//     nf_conntrack_timestamp, set at Start): one "flow" record when a flow
//     ends, with packets and bytes each way, start, end and TCP end state;
//     plus "flow_interim" records for long flows from a periodic
//     conntrack dump filtered by the tunnel marks;
//   - NFLOG (nftables "log group N" in the policy's deny rules): one
//     "flow_denied" record per denied attempt, at most denied_per_source
//     per source per summary_interval.
//
// Overload never blocks: when the record queue is full, or records exceed
// max_records_per_second, flows are folded into counted "flow_summary"
// records (flows, packets, bytes) written every summary_interval; denials
// beyond the per-source limit are counted there too. Socket overruns
// (ENOBUFS: the kernel dropped events because the reader fell behind) are
// counted, logged and turn Health red for a minute: never silent.
package flowlog

import (
	"errors"
	"fmt"
	"time"
)

// Config is the flow_records section.
type Config struct {
	// Enabled turns flow records on.
	Enabled bool `yaml:"enabled"`
	// InterimInterval: a flow alive longer than this gets a flow_interim
	// record (cumulative counters) every interval. 0: none.
	InterimInterval time.Duration `yaml:"interim_interval"`
	// MaxRecordsPerSecond caps flow and interim records; flows over it go
	// into summaries.
	MaxRecordsPerSecond int `yaml:"max_records_per_second"`
	// DeniedPerSource caps flow_denied records per client address per
	// SummaryInterval; the rest are counted in the summary.
	DeniedPerSource int `yaml:"denied_per_source"`
	// SummaryInterval is how often flow_summary records are written (only
	// when something was summarised).
	SummaryInterval time.Duration `yaml:"summary_interval"`
	// QueueLength is the number of records waiting to be shipped before
	// further flows are summarised instead.
	QueueLength int `yaml:"queue_length"`
	// ReadBuffer is the receive buffer of each netlink socket in bytes
	// (SO_RCVBUFFORCE): what absorbs a burst before overruns.
	ReadBuffer int `yaml:"read_buffer"`

	// What steering installed, copied in by the application from
	// steer.(*Steerer).FlowSource (not keys of this section): tunnel marks
	// are MarkBase+slot under MarkMask; denials are logged to NFLOG
	// LogGroup (0: none); TCP to InterceptPorts is the proxy's, not
	// forwarded.
	MarkBase       uint32   `yaml:"-"`
	MarkMask       uint32   `yaml:"-"`
	LogGroup       uint16   `yaml:"-"`
	InterceptPorts []uint16 `yaml:"-"`
}

// DefaultConfig returns the defaults (flow records on).
func DefaultConfig() Config {
	return Config{
		Enabled:             true,
		InterimInterval:     5 * time.Minute,
		MaxRecordsPerSecond: 5000,
		DeniedPerSource:     20,
		SummaryInterval:     time.Minute,
		QueueLength:         16384,
		ReadBuffer:          8 << 20,
	}
}

// Validate checks the configuration; messages start with the yaml key.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.InterimInterval != 0 && c.InterimInterval < time.Second {
		add("interim_interval: %s shorter than 1s (0 turns interim records off)", c.InterimInterval)
	}
	if c.MaxRecordsPerSecond < 1 {
		add("max_records_per_second: %d must be at least 1", c.MaxRecordsPerSecond)
	}
	if c.DeniedPerSource < 0 {
		add("denied_per_source: %d is negative", c.DeniedPerSource)
	}
	if c.SummaryInterval < time.Second {
		add("summary_interval: %s shorter than 1s", c.SummaryInterval)
	}
	if c.QueueLength < 1 {
		add("queue_length: %d must be at least 1", c.QueueLength)
	}
	if c.ReadBuffer < 64<<10 {
		add("read_buffer: %d smaller than 65536", c.ReadBuffer)
	}
	return errors.Join(errs...)
}
