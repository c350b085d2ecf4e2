package proxy

import (
	"context"
	"fmt"
	"unsafe"
)

func sprintf(format string, v ...any) string { return fmt.Sprintf(format, v...) }

// unsafeString views b as a string without copying; b must not change while
// the string is in use.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

func contextWithReq(ctx context.Context, ri *reqInfo) context.Context {
	return context.WithValue(ctx, reqKey{}, ri)
}

func reqFrom(ctx context.Context) *reqInfo {
	ri, _ := ctx.Value(reqKey{}).(*reqInfo)
	return ri
}

func stateFrom(ctx context.Context) *connState {
	st, _ := ctx.Value(stateKey{}).(*connState)
	return st
}
