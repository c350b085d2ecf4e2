package logship

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/logship/batch"
)

// deadLetter is a JSON-lines file of records the sink refused for good:
// {"dead_lettered_at":…,"reason":…,"timestamp":ms,"record":{…}}. Records
// are written and fsynced before their spool range is acknowledged, so a
// refused record is never lost silently.
type deadLetter struct {
	mu   sync.Mutex
	path string
	f    *os.File
	buf  []byte
}

func openDeadLetter(path string) (*deadLetter, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("logship: dead_letter_path: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("logship: dead_letter_path: %w", err)
	}
	return &deadLetter{path: path, f: f}, nil
}

func (d *deadLetter) write(b *batch.Batch, evs []batch.Event, reason string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.buf = d.buf[:0]
	now := time.Now().UTC().Format(time.RFC3339Nano)
	r, _ := json.Marshal(reason)
	for _, e := range evs {
		msg := b.Msg(e)
		d.buf = append(d.buf, `{"dead_lettered_at":"`...)
		d.buf = append(d.buf, now...)
		d.buf = append(d.buf, `","reason":`...)
		d.buf = append(d.buf, r...)
		d.buf = append(d.buf, `,"timestamp":`...)
		d.buf = strconv.AppendInt(d.buf, e.TS, 10)
		d.buf = append(d.buf, `,"record":`...)
		if json.Valid(msg) {
			d.buf = append(d.buf, msg...)
		} else {
			q, _ := json.Marshal(string(msg))
			d.buf = append(d.buf, q...)
		}
		d.buf = append(d.buf, "}\n"...)
	}
	if _, err := d.f.Write(d.buf); err != nil {
		return fmt.Errorf("logship: writing dead letters to %s: %w", d.path, err)
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("logship: syncing %s: %w", d.path, err)
	}
	return nil
}

func (d *deadLetter) close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.f.Close()
}
