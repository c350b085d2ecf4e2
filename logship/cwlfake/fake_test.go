package cwlfake

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs/types"
	"github.com/aws/smithy-go"
)

// client returns a real SDK client pointed at the fake, without retries so
// every injected fault surfaces.
func client(t *testing.T, url string) *cloudwatchlogs.Client {
	t.Helper()
	cfg := aws.Config{
		Region:      "eu-west-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
		Retryer:     func() aws.Retryer { return aws.NopRetryer{} },
	}
	return cloudwatchlogs.NewFromConfig(cfg, func(o *cloudwatchlogs.Options) { o.BaseEndpoint = aws.String(url) })
}

func setup(t *testing.T, opts Options) (*Server, *cloudwatchlogs.Client) {
	f := New(opts)
	ts := httptest.NewServer(f)
	t.Cleanup(ts.Close)
	c := client(t, ts.URL)
	ctx := context.Background()
	if _, err := c.CreateLogGroup(ctx, &cloudwatchlogs.CreateLogGroupInput{LogGroupName: aws.String("g")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateLogStream(ctx, &cloudwatchlogs.CreateLogStreamInput{LogGroupName: aws.String("g"), LogStreamName: aws.String("s")}); err != nil {
		t.Fatal(err)
	}
	return f, c
}

func put(c *cloudwatchlogs.Client, ts []int64, msgs []string) (*cloudwatchlogs.PutLogEventsOutput, error) {
	ev := make([]types.InputLogEvent, len(ts))
	for i := range ts {
		ev[i] = types.InputLogEvent{Timestamp: aws.Int64(ts[i]), Message: aws.String(msgs[i])}
	}
	return c.PutLogEvents(context.Background(), &cloudwatchlogs.PutLogEventsInput{
		LogGroupName: aws.String("g"), LogStreamName: aws.String("s"), LogEvents: ev})
}

func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func TestWireAndLimits(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	f, c := setup(t, Options{Now: func() time.Time { return now }})
	ctx := context.Background()
	ms := now.UnixMilli()

	_, err := c.CreateLogGroup(ctx, &cloudwatchlogs.CreateLogGroupInput{LogGroupName: aws.String("g")})
	var exists *types.ResourceAlreadyExistsException
	if !errors.As(err, &exists) {
		t.Fatalf("duplicate group: %v", err)
	}
	if _, err := put(c, []int64{ms, ms + 1}, []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Events("g", "s"); len(got) != 2 || got[1].Message != "b" {
		t.Fatalf("stored %+v", got)
	}

	cases := []struct {
		name string
		ts   []int64
		msgs []string
	}{
		{"order", []int64{ms + 1, ms}, []string{"a", "b"}},
		{"span", []int64{ms - 24*3600*1000 - 1, ms}, []string{"a", "b"}},
		{"empty", []int64{ms}, []string{""}},
		{"size", []int64{ms, ms}, []string{strings.Repeat("x", 600_000), strings.Repeat("x", 600_000)}},
		{"event", []int64{ms}, []string{strings.Repeat("x", MaxEventBytes+1)}},
	}
	for _, tc := range cases {
		_, err := put(c, tc.ts, tc.msgs)
		var ip *types.InvalidParameterException
		if !errors.As(err, &ip) {
			t.Errorf("%s: got %v, want InvalidParameterException", tc.name, err)
		}
	}
	// Exactly at the size limit is fine: 1,048,576 = 2*(524,262+26).
	if _, err := put(c, []int64{ms, ms}, []string{strings.Repeat("x", 524_262), strings.Repeat("y", 524_262)}); err != nil {
		t.Fatalf("batch at the limit: %v", err)
	}
	ts := make([]int64, MaxBatchEvents+1)
	msgs := make([]string, len(ts))
	for i := range ts {
		ts[i], msgs[i] = ms, "m"
	}
	if _, err := put(c, ts, msgs); code(err) != "InvalidParameterException" {
		t.Fatalf("10,001 events: %v", err)
	}
	if _, err := put(c, ts[:MaxBatchEvents], msgs[:MaxBatchEvents]); err != nil {
		t.Fatalf("10,000 events: %v", err)
	}

	// Per-event rejection: too old, expired by retention, too new.
	f.CreateLogGroup("g", 7)
	day := int64(24 * 3600 * 1000)
	before := f.Count("g", "s")
	// Each call must itself span <= 24 h, so one kind of rejection per call.
	out, err := put(c, []int64{ms - 15*day, ms - 15*day + 1}, []string{"old", "old"})
	if err != nil || out.RejectedLogEventsInfo == nil || aws.ToInt32(out.RejectedLogEventsInfo.TooOldLogEventEndIndex) != 2 {
		t.Fatalf("too old: %v %+v", err, out)
	}
	out, err = put(c, []int64{ms - 7*day - 3600_000, ms - 7*day + 3600_000}, []string{"expired", "ok"})
	if err != nil || out.RejectedLogEventsInfo == nil || aws.ToInt32(out.RejectedLogEventsInfo.ExpiredLogEventEndIndex) != 1 ||
		out.RejectedLogEventsInfo.TooOldLogEventEndIndex != nil {
		t.Fatalf("expired: %v %+v", err, out)
	}
	out, err = put(c, []int64{ms, ms + 3*3600*1000}, []string{"ok", "new"})
	if err != nil || out.RejectedLogEventsInfo == nil || aws.ToInt32(out.RejectedLogEventsInfo.TooNewLogEventStartIndex) != 1 {
		t.Fatalf("too new: %v %+v", err, out)
	}
	if f.Count("g", "s") != before+2 {
		t.Fatalf("stored %d, want 2 more", f.Count("g", "s")-before)
	}

	// Missing stream and group.
	f.DeleteLogStream("g", "s")
	_, err = put(c, []int64{ms}, []string{"a"})
	var nf *types.ResourceNotFoundException
	if !errors.As(err, &nf) {
		t.Fatalf("deleted stream: %v", err)
	}
	_, err = c.CreateLogStream(ctx, &cloudwatchlogs.CreateLogStreamInput{LogGroupName: aws.String("nope"), LogStreamName: aws.String("s")})
	if !errors.As(err, &nf) {
		t.Fatalf("stream in missing group: %v", err)
	}
	if _, err := c.PutRetentionPolicy(ctx, &cloudwatchlogs.PutRetentionPolicyInput{LogGroupName: aws.String("g"), RetentionInDays: aws.Int32(30)}); err != nil || f.Retention("g") != 30 {
		t.Fatalf("retention: %v %d", err, f.Retention("g"))
	}
}

func TestFaults(t *testing.T) {
	f, c := setup(t, Options{})
	ms := time.Now().UnixMilli()
	one := func() error { _, err := put(c, []int64{ms}, []string{"x"}); return err }

	f.InjectFault(ServiceUnavailable, 1)
	var su *types.ServiceUnavailableException
	if err := one(); !errors.As(err, &su) {
		t.Fatalf("500: %v", err)
	}
	f.InjectFault(Bare503, 1)
	if err := one(); err == nil || code(err) == "ServiceUnavailableException" {
		t.Fatalf("bare 503: %v", err)
	} else if !strings.Contains(err.Error(), "503") {
		t.Fatalf("bare 503 error does not carry the status: %v", err)
	}
	f.InjectFault(Reset, 1)
	if err := one(); err == nil {
		t.Fatal("reset: no error")
	}
	n := f.Count("g", "s")
	f.InjectFault(AcceptThenReset, 1)
	if err := one(); err == nil {
		t.Fatal("accept-then-reset: no error")
	}
	if f.Count("g", "s") != n+1 {
		t.Fatal("accept-then-reset did not store")
	}
	f.SetSlow(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := c.PutLogEvents(ctx, &cloudwatchlogs.PutLogEventsInput{LogGroupName: aws.String("g"), LogStreamName: aws.String("s"),
		LogEvents: []types.InputLogEvent{{Timestamp: aws.Int64(ms), Message: aws.String("x")}}})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow: %v", err)
	}
	f.ClearFaults()

	f.SetThrottle(2)
	var thr *types.ThrottlingException
	throttled := false
	for range 20 {
		if err := one(); errors.As(err, &thr) {
			throttled = true
			break
		}
	}
	if !throttled {
		t.Fatal("no ThrottlingException at 2 requests/s")
	}
	f.ClearFaults()
	f.SetPoison("BAD")
	if _, err := put(c, []int64{ms, ms}, []string{"ok", "xBADx"}); code(err) != "InvalidParameterException" {
		t.Fatalf("poison: %v", err)
	}
}

func TestStandalone(t *testing.T) {
	f := New(Options{})
	url, err := f.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := client(t, url)
	if _, err := c.CreateLogGroup(context.Background(), &cloudwatchlogs.CreateLogGroupInput{LogGroupName: aws.String("demo")}); err != nil {
		t.Fatal(err)
	}
	if f.Calls("CreateLogGroup") != 1 {
		t.Fatal("call not counted")
	}
}

// FuzzPutLogEvents: any request body gets an answer, never a panic, and
// what is stored always satisfies the limits.
func FuzzPutLogEvents(f *testing.F) {
	f.Add([]byte(`{"logGroupName":"g","logStreamName":"s","logEvents":[{"timestamp":1,"message":"a"}]}`))
	f.Add([]byte(`{"logGroupName":"g","logStreamName":"s","logEvents":[{"timestamp":2,"message":"a"},{"timestamp":1,"message":"b"}]}`))
	f.Add([]byte(`{"logEvents":null}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, body []byte) {
		s := New(Options{Now: func() time.Time { return time.UnixMilli(1_000_000) }})
		s.CreateLogGroup("g", 0)
		s.groups["g"].streams["s"] = &stream{}
		s.putLogEvents(body)
		evs := s.Events("g", "s")
		size := 0
		for i, e := range evs {
			if e.Message == "" || (i > 0 && e.Timestamp < evs[i-1].Timestamp) {
				t.Fatalf("stored invalid event %d: %+v", i, e)
			}
			size += len(e.Message) + EventOverhead
		}
		if size > MaxBatchBytes || len(evs) > MaxBatchEvents {
			t.Fatalf("stored %d events, %d bytes", len(evs), size)
		}
	})
}
