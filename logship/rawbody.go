package logship

import (
	"bytes"
	"context"
	"strconv"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/gwlbproxy/gwlbproxy/logship/batch"
)

// The SDK's generic JSON serializer escapes every message byte by byte and
// grows its buffer by doubling; for 1 MB batches of JSON records that was
// half of the shipper's CPU. encodePutBody writes the same awsJson1.1
// PutLogEvents document in one pass into a buffer of the right size, and
// rawBody swaps it in right after the SDK's serializer (Serialize step),
// before the payload hash, signing, sending and error parsing, which stay
// the SDK's. TestRawBodyMatchesSDK checks both encodings store the same.

// encodePutBody returns {"logEvents":[{"message":..,"timestamp":..},..],
// "logGroupName":..,"logStreamName":..}.
func encodePutBody(group, stream string, b *batch.Batch, evs []batch.Event) []byte {
	n := 64 + len(group) + len(stream)
	for _, e := range evs {
		n += 48 + len(b.Msg(e))*11/10
	}
	out := make([]byte, 0, n)
	out = append(out, `{"logEvents":[`...)
	for i, e := range evs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"message":`...)
		out = appendJSONString(out, b.Msg(e))
		out = append(out, `,"timestamp":`...)
		out = strconv.AppendInt(out, e.TS, 10)
		out = append(out, '}')
	}
	out = append(out, `],"logGroupName":`...)
	out = appendJSONString(out, []byte(group))
	out = append(out, `,"logStreamName":`...)
	out = appendJSONString(out, []byte(stream))
	return append(out, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD (as
// encoding/json does), everything else copied in runs.
func appendJSONString(out, s []byte) []byte {
	out = append(out, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRune(s[i:])
			if r == utf8.RuneError && size == 1 {
				out = append(out, s[start:i]...)
				out = append(out, `\ufffd`...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		out = append(out, s[start:i]...)
		switch c {
		case '"', '\\':
			out = append(out, '\\', c)
		case '\n':
			out = append(out, '\\', 'n')
		case '\r':
			out = append(out, '\\', 'r')
		case '\t':
			out = append(out, '\\', 't')
		default:
			out = append(out, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	out = append(out, s[start:]...)
	return append(out, '"')
}

// rawBody is a per-call client option replacing the serialized request
// body with body.
func rawBody(body []byte) func(*cloudwatchlogs.Options) {
	return func(o *cloudwatchlogs.Options) {
		o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
			return st.Serialize.Add(middleware.SerializeMiddlewareFunc("logshipRawPutBody",
				func(ctx context.Context, in middleware.SerializeInput, next middleware.SerializeHandler) (
					middleware.SerializeOutput, middleware.Metadata, error) {
					if req, ok := in.Request.(*smithyhttp.Request); ok {
						r, err := req.SetStream(bytes.NewReader(body))
						if err != nil {
							return middleware.SerializeOutput{}, middleware.Metadata{}, err
						}
						r.ContentLength = int64(len(body))
						in.Request = r
					}
					return next.HandleSerialize(ctx, in)
				}), middleware.After)
		})
	}
}
