package logship

import (
	"fmt"
	"io"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/gwlbproxy/gwlbproxy/logship/batch"
	"github.com/gwlbproxy/gwlbproxy/logship/evetail"
)

// Sink names.
const (
	SinkStdout     = "stdout"
	SinkFile       = "file"
	SinkCloudWatch = "cloudwatch"
)

// Spool full policies.
const (
	FullFailClosed = "fail_closed"
	FullDrop       = "drop"
)

// Config is the log shipper's section of the appliance configuration.
type Config struct {
	// Sink is where records go: stdout (the default, for demo and
	// development), file (JSON lines rotated by size) or cloudwatch.
	Sink       string           `yaml:"sink"`
	File       FileConfig       `yaml:"file"`
	CloudWatch CloudWatchConfig `yaml:"cloudwatch"`
	Spool      SpoolConfig      `yaml:"spool"`
	// FlushInterval is the longest a record waits for its batch to fill.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// Senders is how many batches are in flight at once (cloudwatch only;
	// file and stdout write in order from one sender).
	Senders int `yaml:"senders"`
	// DrainDeadline bounds Close: how long the spool is given to drain.
	DrainDeadline time.Duration `yaml:"drain_deadline"`
	// DeadLetterPath receives records the sink refused for good (JSON lines).
	DeadLetterPath string `yaml:"dead_letter_path"`
	// MaxEventBytes is the largest record shipped whole; larger records are
	// truncated (valid JSON, record_id kept, logship_truncated marker).
	MaxEventBytes int         `yaml:"max_event_bytes"`
	Retry         RetryConfig `yaml:"retry"`
	// UnhealthyAge turns Health red when the oldest unacknowledged record
	// is older than this: the sink has been failing long enough that an
	// operator must look. 0 disables the check.
	UnhealthyAge time.Duration `yaml:"unhealthy_age"`
	EMF          EMFConfig     `yaml:"emf"`
	// InstanceID names the stream when log_stream is empty (the
	// application sets it from the AWS environment's instance id); empty:
	// the host name.
	InstanceID string `yaml:"instance_id"`

	// IDSAlerts follows Suricata's eve.json and ships its alerts into the
	// same log group as records of type ids_alert (issue 19).
	IDSAlerts evetail.Config `yaml:"ids_alerts"`

	// Stdout is where the stdout sink writes (nil = os.Stdout). Not YAML.
	Stdout io.Writer `yaml:"-"`
}

// FileConfig is the file sink.
type FileConfig struct {
	Path string `yaml:"path"`
	// RotateBytes rotates the file to Path.1 (… Path.<Keep>) at this size.
	RotateBytes int64 `yaml:"rotate_bytes"`
	Keep        int   `yaml:"keep"`
}

// CloudWatchConfig places records in CloudWatch Logs.
type CloudWatchConfig struct {
	LogGroup string `yaml:"log_group"`
	// LogStream defaults to the instance id.
	LogStream string `yaml:"log_stream"`
	// Region is the log group's region when it differs from the
	// appliance's (aws.region, else the instance's); empty: that one.
	Region string `yaml:"region"`
	// CreateGroup lets the shipper create a missing group (needs
	// logs:CreateLogGroup); normally the deployment template owns it.
	CreateGroup bool `yaml:"create_group"`
	// RetentionDays is applied only to a group the shipper created.
	RetentionDays int `yaml:"retention_days"`
	// PutTimeout bounds one PutLogEvents attempt.
	PutTimeout time.Duration `yaml:"put_timeout"`

	// AWS is the SDK configuration (region, credentials, endpoint
	// override, HTTP client) of the appliance's one AWS environment
	// (cmd/internal/awsenv), given by the composition root; required by
	// the cloudwatch sink, which loads none itself. Its retryer is
	// replaced by none: the shipper retries itself. Not YAML.
	AWS aws.Config `yaml:"-"`
}

// SpoolConfig is the write-ahead queue between Ship and the sink.
type SpoolConfig struct {
	// Enabled false keeps the queue in memory (lost on crash); meant for
	// the stdout sink.
	Enabled  bool   `yaml:"enabled"`
	Dir      string `yaml:"dir"`
	MaxBytes int64  `yaml:"max_bytes"`
	// SegmentBytes is the segment file size; 0 picks MaxBytes/16 clamped
	// to 64 KiB..16 MiB.
	SegmentBytes int64 `yaml:"segment_bytes"`
	// FullPolicy: fail_closed (Ship errors, Health red, the proxy stops
	// accepting) or drop (count, log loudly, keep serving).
	FullPolicy    string        `yaml:"full_policy"`
	FsyncInterval time.Duration `yaml:"fsync_interval"`
}

// RetryConfig is the shipper's own retry policy (the SDK's is off).
type RetryConfig struct {
	MinBackoff time.Duration `yaml:"min_backoff"`
	MaxBackoff time.Duration `yaml:"max_backoff"`
}

// EMFConfig is the optional per-minute Embedded Metric Format record.
type EMFConfig struct {
	Enabled   bool          `yaml:"enabled"`
	Namespace string        `yaml:"namespace"`
	Interval  time.Duration `yaml:"interval"`
}

// DefaultConfig returns every default.
func DefaultConfig() Config {
	return Config{
		Sink: SinkStdout,
		File: FileConfig{Path: "/var/log/gwlbproxy/records.jsonl", RotateBytes: 100 << 20, Keep: 5},
		CloudWatch: CloudWatchConfig{
			LogGroup:   "/gwlbproxy/records",
			PutTimeout: 30 * time.Second,
		},
		Spool: SpoolConfig{
			Enabled:       true,
			Dir:           "/var/lib/gwlbproxy/spool",
			MaxBytes:      512 << 20,
			FullPolicy:    FullFailClosed,
			FsyncInterval: 200 * time.Millisecond,
		},
		FlushInterval:  time.Second,
		Senders:        4,
		DrainDeadline:  30 * time.Second,
		DeadLetterPath: "/var/lib/gwlbproxy/deadletter.jsonl",
		MaxEventBytes:  batch.MaxEventBytes,
		Retry:          RetryConfig{MinBackoff: 200 * time.Millisecond, MaxBackoff: 30 * time.Second},
		UnhealthyAge:   30 * time.Minute,
		EMF:            EMFConfig{Namespace: "gwlbproxy", Interval: time.Minute},
		IDSAlerts:      evetail.DefaultConfig(),
	}
}

// Validate checks the configuration; messages start with the yaml key.
func (c Config) Validate() error {
	switch c.Sink {
	case SinkStdout, SinkFile, SinkCloudWatch:
	default:
		return fmt.Errorf("sink: %q is not one of stdout, file, cloudwatch", c.Sink)
	}
	if c.Sink == SinkFile {
		if c.File.Path == "" {
			return fmt.Errorf("file.path: required for the file sink")
		}
		if c.File.RotateBytes < 4096 {
			return fmt.Errorf("file.rotate_bytes: %d below 4096", c.File.RotateBytes)
		}
		if c.File.Keep < 1 || c.File.Keep > 1000 {
			return fmt.Errorf("file.keep: %d out of range 1..1000", c.File.Keep)
		}
	}
	if c.Sink == SinkCloudWatch {
		cw := c.CloudWatch
		if cw.LogGroup == "" || len(cw.LogGroup) > 512 {
			return fmt.Errorf("cloudwatch.log_group: must be 1..512 characters")
		}
		if len(cw.LogStream) > 512 {
			return fmt.Errorf("cloudwatch.log_stream: longer than 512 characters")
		}
		for _, r := range cw.LogStream {
			if r == ':' || r == '*' {
				return fmt.Errorf("cloudwatch.log_stream: %q must not contain ':' or '*'", cw.LogStream)
			}
		}
		if cw.RetentionDays < 0 {
			return fmt.Errorf("cloudwatch.retention_days: %d is negative", cw.RetentionDays)
		}
		if cw.PutTimeout < time.Second {
			return fmt.Errorf("cloudwatch.put_timeout: %s below 1s", cw.PutTimeout)
		}
	}
	if c.Spool.Enabled && c.Spool.Dir == "" {
		return fmt.Errorf("spool.dir: required when the spool is enabled")
	}
	if c.Spool.MaxBytes < 1<<20 {
		return fmt.Errorf("spool.max_bytes: %d below 1 MiB", c.Spool.MaxBytes)
	}
	if c.Spool.SegmentBytes != 0 && (c.Spool.SegmentBytes < 4096 || c.Spool.SegmentBytes > c.Spool.MaxBytes) {
		return fmt.Errorf("spool.segment_bytes: %d out of range 4096..max_bytes", c.Spool.SegmentBytes)
	}
	switch c.Spool.FullPolicy {
	case FullFailClosed, FullDrop:
	default:
		return fmt.Errorf("spool.full_policy: %q is not fail_closed or drop", c.Spool.FullPolicy)
	}
	if c.Spool.FsyncInterval <= 0 || c.Spool.FsyncInterval > 200*time.Millisecond {
		return fmt.Errorf("spool.fsync_interval: %s out of range (0, 200ms]", c.Spool.FsyncInterval)
	}
	if c.FlushInterval < time.Millisecond || c.FlushInterval > time.Minute {
		return fmt.Errorf("flush_interval: %s out of range 1ms..1m", c.FlushInterval)
	}
	if c.Senders < 1 || c.Senders > 64 {
		return fmt.Errorf("senders: %d out of range 1..64", c.Senders)
	}
	if c.DrainDeadline < 0 {
		return fmt.Errorf("drain_deadline: %s is negative", c.DrainDeadline)
	}
	if c.DeadLetterPath == "" {
		return fmt.Errorf("dead_letter_path: required")
	}
	if c.MaxEventBytes < batch.MinTruncateLimit || c.MaxEventBytes > batch.MaxEventBytes {
		return fmt.Errorf("max_event_bytes: %d out of range %d..%d", c.MaxEventBytes, batch.MinTruncateLimit, batch.MaxEventBytes)
	}
	if c.Retry.MinBackoff <= 0 || c.Retry.MaxBackoff < c.Retry.MinBackoff {
		return fmt.Errorf("retry.min_backoff: %s must be positive and at most retry.max_backoff %s", c.Retry.MinBackoff, c.Retry.MaxBackoff)
	}
	if c.UnhealthyAge < 0 {
		return fmt.Errorf("unhealthy_age: %s is negative", c.UnhealthyAge)
	}
	if c.EMF.Enabled {
		if c.EMF.Namespace == "" {
			return fmt.Errorf("emf.namespace: required when emf is enabled")
		}
		if c.EMF.Interval < time.Second {
			return fmt.Errorf("emf.interval: %s below 1s", c.EMF.Interval)
		}
	}
	if err := c.IDSAlerts.Validate(); err != nil {
		return fmt.Errorf("ids_alerts.%w", err)
	}
	return nil
}
