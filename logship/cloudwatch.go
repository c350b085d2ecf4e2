package logship

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs/types"
	"github.com/aws/smithy-go"

	"github.com/gwlbproxy/gwlbproxy/logship/batch"
)

// cwSink puts batches into one log stream with the real SDK. The SDK's
// retryer is off: the shipper retries forever itself (see deliver),
// because the SDK gives up after three attempts and that loses records.
type cwSink struct {
	log        *slog.Logger
	client     *cloudwatchlogs.Client
	transport  *http.Transport
	group      string
	stream     string
	create     bool
	retention  int
	putTimeout time.Duration
	// sdkSerializer makes put use the SDK's own JSON encoding instead of
	// encodePutBody (tests compare the two).
	sdkSerializer bool

	ensureMu sync.Mutex
}

// streamName returns the configured stream, else the instance id the
// application gave, else the host name (outside EC2).
func streamName(cfg Config, log *slog.Logger) string {
	if cfg.CloudWatch.LogStream != "" {
		return cfg.CloudWatch.LogStream
	}
	if cfg.InstanceID != "" {
		return cfg.InstanceID
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	log.Info("logship: no instance id, naming the stream after the host", "host", host)
	return host
}

// newCloudWatchSink builds the Logs client from the injected SDK
// configuration: its region (or cloudwatch.region), credentials, endpoint
// override and HTTP client settings (the CA bundle the loader applied),
// with a connection pool sized for the senders and no SDK retries.
func newCloudWatchSink(cfg Config, log *slog.Logger) (*cwSink, error) {
	cw := cfg.CloudWatch
	awsCfg := cw.AWS
	if awsCfg.Credentials == nil {
		return nil, errors.New("logship: the cloudwatch sink was given no AWS configuration (credentials)")
	}
	if cw.Region != "" {
		awsCfg.Region = cw.Region
	}
	if awsCfg.Region == "" {
		return nil, errors.New("logship: cloudwatch.region is empty and the AWS environment has no region")
	}
	pool := func(tr *http.Transport) {
		tr.MaxIdleConnsPerHost = cfg.Senders + 2
		tr.IdleConnTimeout = 60 * time.Second
		tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	// A BuildableClient from the loader carries AWS_CA_BUNDLE as a
	// transport option; add ours to it rather than replace it. Own the
	// final transport so Close can release its idle connections.
	bc, ok := awsCfg.HTTPClient.(*awshttp.BuildableClient)
	if !ok || bc == nil {
		bc = awshttp.NewBuildableClient()
	}
	tr := bc.WithTransportOptions(pool).GetTransport()
	awsCfg.HTTPClient = &http.Client{Transport: tr}
	client := cloudwatchlogs.NewFromConfig(awsCfg, func(o *cloudwatchlogs.Options) {
		o.Retryer = aws.NopRetryer{}
	})
	return &cwSink{
		log: log, client: client, transport: tr,
		group: cw.LogGroup, stream: streamName(cfg, log), create: cw.CreateGroup, retention: cw.RetentionDays,
		putTimeout: cw.PutTimeout,
	}, nil
}

func (c *cwSink) ordered() bool { return false }

func (c *cwSink) close() error {
	c.transport.CloseIdleConnections()
	return nil
}

func (c *cwSink) put(ctx context.Context, b *batch.Batch, evs []batch.Event) ([]rejection, error) {
	ctx, cancel := context.WithTimeout(ctx, c.putTimeout)
	defer cancel()
	if c.sdkSerializer {
		return c.putSDK(ctx, b, evs)
	}
	out, err := c.client.PutLogEvents(ctx, &cloudwatchlogs.PutLogEventsInput{
		LogGroupName: &c.group, LogStreamName: &c.stream, LogEvents: []types.InputLogEvent{},
	}, rawBody(encodePutBody(c.group, c.stream, b, evs)))
	if err != nil {
		return nil, err
	}
	return rejections(out.RejectedLogEventsInfo, len(evs)), nil
}

// putSDK lets the SDK serialize the events (reference path for tests).
func (c *cwSink) putSDK(ctx context.Context, b *batch.Batch, evs []batch.Event) ([]rejection, error) {
	in := make([]types.InputLogEvent, len(evs))
	ts := make([]int64, len(evs))
	msgs := make([]string, len(evs))
	for i, e := range evs {
		ts[i] = e.TS
		// Zero-copy view of the arena; the SDK serializes it during the
		// call and keeps no reference afterwards.
		msgs[i] = b.MsgString(e)
		in[i] = types.InputLogEvent{Timestamp: &ts[i], Message: &msgs[i]}
	}
	out, err := c.client.PutLogEvents(ctx, &cloudwatchlogs.PutLogEventsInput{
		LogGroupName: &c.group, LogStreamName: &c.stream, LogEvents: in,
	})
	if err != nil {
		return nil, err
	}
	return rejections(out.RejectedLogEventsInfo, len(evs)), nil
}

// rejections turns RejectedLogEventsInfo into index ranges.
func rejections(ri *types.RejectedLogEventsInfo, n int) []rejection {
	if ri == nil {
		return nil
	}
	var out []rejection
	clamp := func(v int32) int { return min(max(int(v), 0), n) }
	if ri.TooOldLogEventEndIndex != nil {
		out = append(out, rejection{0, clamp(*ri.TooOldLogEventEndIndex), "too_old"})
	}
	if ri.ExpiredLogEventEndIndex != nil {
		lo := 0
		if len(out) > 0 {
			lo = out[0].hi
		}
		if hi := clamp(*ri.ExpiredLogEventEndIndex); hi > lo {
			out = append(out, rejection{lo, hi, "expired"})
		}
	}
	if ri.TooNewLogEventStartIndex != nil {
		out = append(out, rejection{clamp(*ri.TooNewLogEventStartIndex), n, "too_new"})
	}
	return out
}

// ensure creates the stream, and the group first if it is missing and
// configured to. "Already exists" is success: another sender (or
// instance) won the race.
func (c *cwSink) ensure(ctx context.Context) error {
	c.ensureMu.Lock()
	defer c.ensureMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, c.putTimeout)
	defer cancel()
	err := c.createStream(ctx)
	if errorCode(err) == "ResourceNotFoundException" && c.create {
		if err := c.createGroup(ctx); err != nil {
			return err
		}
		err = c.createStream(ctx)
	}
	return err
}

func (c *cwSink) createStream(ctx context.Context) error {
	_, err := c.client.CreateLogStream(ctx, &cloudwatchlogs.CreateLogStreamInput{LogGroupName: &c.group, LogStreamName: &c.stream})
	if err == nil {
		c.log.Info("logship: created log stream", "group", c.group, "stream", c.stream)
	}
	if errorCode(err) == "ResourceAlreadyExistsException" {
		return nil
	}
	return err
}

func (c *cwSink) createGroup(ctx context.Context) error {
	_, err := c.client.CreateLogGroup(ctx, &cloudwatchlogs.CreateLogGroupInput{LogGroupName: &c.group})
	if errorCode(err) == "ResourceAlreadyExistsException" {
		return nil
	}
	if err != nil {
		return err
	}
	c.log.Info("logship: created log group", "group", c.group)
	if c.retention > 0 {
		if _, err := c.client.PutRetentionPolicy(ctx, &cloudwatchlogs.PutRetentionPolicyInput{
			LogGroupName: &c.group, RetentionInDays: aws.Int32(int32(c.retention))}); err != nil {
			c.log.Warn("logship: setting retention on the new group", "group", c.group, "err", err)
		}
	}
	return nil
}

func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// errClass is what the shipper does about a sink error.
type errClass int

const (
	classRetry    errClass = iota // throttling, 5xx, timeouts, network: back off, retry
	classNotFound                 // create the stream (and group), retry
	classInvalid                  // split the batch until the bad record is alone
)

func classify(err error) errClass {
	switch errorCode(err) {
	case "ResourceNotFoundException":
		return classNotFound
	case "InvalidParameterException":
		return classInvalid
	}
	return classRetry
}
