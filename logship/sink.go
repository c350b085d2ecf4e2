package logship

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/gwlbproxy/gwlbproxy/logship/batch"
)

// rejection is a run of events the sink accepted the call for but refused
// one by one (CloudWatch's RejectedLogEventsInfo).
type rejection struct {
	lo, hi int // indices into the events passed to put, [lo, hi)
	reason string
}

// sink writes one sorted run of events from a batch. A nil error means
// every event was stored except the rejected ones. Errors are classified
// by the shipper (see classify) and retried, split or answered by ensure.
type sink interface {
	put(ctx context.Context, b *batch.Batch, evs []batch.Event) ([]rejection, error)
	// ensure creates what a "not found" error said was missing.
	ensure(ctx context.Context) error
	// ordered sinks get a single sender so lines keep their order.
	ordered() bool
	close() error
}

// lineSink writes JSON lines to a writer (stdout), one write per batch.
type lineSink struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

func (l *lineSink) put(_ context.Context, b *batch.Batch, evs []batch.Event) ([]rejection, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = l.buf[:0]
	for _, e := range evs {
		l.buf = append(l.buf, b.Msg(e)...)
		l.buf = append(l.buf, '\n')
	}
	_, err := l.w.Write(l.buf)
	return nil, err
}

func (l *lineSink) ensure(context.Context) error { return nil }
func (l *lineSink) ordered() bool                { return true }
func (l *lineSink) close() error                 { return nil }

// fileSink writes JSON lines to a file rotated by size: path, path.1, …
// path.<keep>. Each batch is written and fsynced before it is acknowledged.
type fileSink struct {
	mu     sync.Mutex
	path   string
	rotate int64
	keep   int
	f      *os.File
	size   int64
	buf    []byte
}

func newFileSink(c FileConfig) (*fileSink, error) {
	if err := os.MkdirAll(filepath.Dir(c.Path), 0o750); err != nil {
		return nil, fmt.Errorf("logship: file sink: %w", err)
	}
	s := &fileSink{path: c.Path, rotate: c.RotateBytes, keep: c.Keep}
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *fileSink) open() error {
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("logship: file sink: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("logship: file sink: %w", err)
	}
	s.f, s.size = f, st.Size()
	return nil
}

func (s *fileSink) rotateNow() error {
	if err := s.f.Close(); err != nil {
		return err
	}
	s.f = nil
	os.Remove(fmt.Sprintf("%s.%d", s.path, s.keep))
	for i := s.keep - 1; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", s.path, i), fmt.Sprintf("%s.%d", s.path, i+1))
	}
	if err := os.Rename(s.path, s.path+".1"); err != nil {
		return err
	}
	return s.open()
}

func (s *fileSink) put(_ context.Context, b *batch.Batch, evs []batch.Event) ([]rejection, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		if err := s.open(); err != nil {
			return nil, err
		}
	}
	s.buf = s.buf[:0]
	for _, e := range evs {
		s.buf = append(s.buf, b.Msg(e)...)
		s.buf = append(s.buf, '\n')
	}
	if s.size > 0 && s.size+int64(len(s.buf)) > s.rotate {
		if err := s.rotateNow(); err != nil {
			return nil, fmt.Errorf("logship: rotating %s: %w", s.path, err)
		}
	}
	n, err := s.f.Write(s.buf)
	if err == nil {
		err = s.f.Sync()
	}
	if err != nil {
		// Cut a partial write so the retry does not leave half a line.
		if n > 0 {
			s.f.Truncate(s.size)
		}
		return nil, fmt.Errorf("logship: writing %s: %w", s.path, err)
	}
	s.size += int64(n)
	return nil, nil
}

func (s *fileSink) ensure(context.Context) error { return nil }
func (s *fileSink) ordered() bool                { return true }

func (s *fileSink) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
