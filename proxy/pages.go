package proxy

import (
	"bytes"
	"html"
	"io"
	"net/http"
	"strconv"
)

// page renders the HTML error/deny page. Everything interpolated is
// escaped; record_id lets an operator find the matching record.
func page(status int, title, detail, recordHint string) []byte {
	var b bytes.Buffer
	b.WriteString("<!doctype html><html><head><meta charset=\"utf-8\"><title>")
	b.WriteString(strconv.Itoa(status) + " " + html.EscapeString(title))
	b.WriteString("</title></head><body><h1>")
	b.WriteString(strconv.Itoa(status) + " " + html.EscapeString(title))
	b.WriteString("</h1><p>")
	b.WriteString(html.EscapeString(detail))
	b.WriteString("</p><p><small>gwlbproxy")
	if recordHint != "" {
		b.WriteString(" &middot; " + html.EscapeString(recordHint))
	}
	b.WriteString("</small></p></body></html>\n")
	return b.Bytes()
}

// writePage answers directly on the client connection.
func (p *Proxy) writePage(w http.ResponseWriter, r *http.Request, status int, title, detail string, ri *reqInfo) {
	body := page(status, title, detail, "")
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Gwlbproxy-Action", ri.rec.Action)
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// pageResponse builds a page as an *http.Response for goproxy to copy.
func (p *Proxy) pageResponse(r *http.Request, status int, title, detail string, ri *reqInfo) *http.Response {
	body := page(status, title, detail, "")
	h := http.Header{}
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Gwlbproxy-Action", ri.rec.Action)
	return &http.Response{
		Status: strconv.Itoa(status) + " " + title, StatusCode: status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
		Request: r,
	}
}
