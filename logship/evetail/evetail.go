// Package evetail follows Suricata's eve.json and ships its alerts as
// records of type "ids_alert" through the same pipeline (and so to the same
// log group) as the proxy's request records.
//
// The read position (device, inode, offset of the next unread line) is
// persisted after the records before it were accepted by the shipper and
// synced to its spool: a restart resumes exactly there, so nothing is lost
// and, after an orderly stop, nothing is shipped twice. Rotation by rename
// (logrotate's default; Suricata reopens on SIGHUP) is followed: the old
// file is read to its end through the open descriptor, or found again by
// inode among its rotated siblings after a restart, before the new file
// is read from its start. Truncation in place (copytruncate) restarts at
// offset 0.
//
// A crash between the spool sync and the position write would repeat the
// last batch: the position and the records cannot be written atomically.
// So the saved position also names the spool's next sequence at the time
// it was written, and the spool holds (does not delete, even once
// delivered) the frames from there on. After a restart the tailer reads
// those frames back and skips the alerts whose record_id (derived from the
// file identity and offset) they already carry. What remains is the
// shipper's own at-least-once delivery: a batch the sink stored whose
// acknowledgement the crash cut off is sent again (same record_id, so
// `dedup record_id` removes it in Logs Insights).
package evetail

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// maxLine bounds one eve.json line held in memory.
const maxLine = 16 << 20

// Shipper is what the tailer ships through (*logship.Shipper).
type Shipper interface {
	Ship(ts time.Time, record []byte) error
	Sync() error
}

// spoolView is the part of *logship.Shipper that lets the tailer skip, after
// a crash, alerts the spool already holds. A Shipper without it (a test
// double, a memory spool) gets at-least-once after a crash.
type spoolView interface {
	SpoolNextSeq() uint64
	SpoolHold(seq uint64) error
	SpoolScanFrom(seq uint64, fn func(record []byte) bool) (complete bool, err error)
}

// Config says what to follow (the logship.ids_alerts section).
type Config struct {
	// Enabled starts the tailer with the appliance.
	Enabled bool `yaml:"enabled"`
	// Path of eve.json.
	Path string `yaml:"path"`
	// StateFile keeps the read position across restarts.
	StateFile string `yaml:"state_file"`
	// Poll is how often the file is checked for new lines and rotation.
	Poll time.Duration `yaml:"poll"`
	// InstanceID goes into every record.
	InstanceID string `yaml:"-"`
}

// DefaultConfig is off, following Suricata's default eve.json.
func DefaultConfig() Config {
	return Config{Path: "/var/log/suricata/eve.json", StateFile: "/var/lib/gwlbproxy/eve.pos", Poll: 250 * time.Millisecond}
}

// Validate checks c, also when disabled; messages start with the yaml key.
func (c Config) Validate() error {
	if c.Path == "" {
		return errors.New("path: required")
	}
	if c.StateFile == "" {
		return errors.New("state_file: required")
	}
	if c.Poll < 10*time.Millisecond || c.Poll > time.Minute {
		return fmt.Errorf("poll: %s out of range 10ms..1m", c.Poll)
	}
	return nil
}

// position identifies the next unread byte.
type position struct {
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
	Offset int64  `json:"offset"`
	// Seq is the spool's next sequence when the position was saved: every
	// record shipped after it has a sequence at or above it.
	Seq *uint64 `json:"spool_seq,omitempty"`
}

// Tailer follows one eve.json.
type Tailer struct {
	cfg  Config
	ship Shipper
	log  *slog.Logger

	f   *os.File
	pos position
	buf []byte
	rec []byte

	sv     spoolView
	heldAt time.Time
	// spooled are the records (by record_id) of alerts the spool got after
	// the saved position (a crash before the next position write); nil
	// when none.
	spooled map[string][]byte

	// Shipped counts alerts shipped, Skipped lines that were not alerts,
	// Bad lines that were not JSON, Respooled alerts not shipped again
	// after a restart because the spool already held them.
	Shipped, Skipped, Bad, Respooled int
}

// New returns a tailer; Run starts it.
func New(cfg Config, ship Shipper, log *slog.Logger) (*Tailer, error) {
	if cfg.Path == "" || cfg.StateFile == "" {
		return nil, errors.New("evetail: path and state_file are required")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	t := &Tailer{cfg: cfg, ship: ship, log: log}
	t.sv, _ = ship.(spoolView)
	return t, nil
}

func fileID(fi os.FileInfo) (dev, ino uint64) {
	st := fi.Sys().(*syscall.Stat_t)
	return uint64(st.Dev), st.Ino
}

// Run follows the file until ctx ends; the position is saved before it
// returns.
func (t *Tailer) Run(ctx context.Context) error {
	if err := t.resume(); err != nil {
		return err
	}
	defer func() {
		if t.f != nil {
			t.f.Close()
		}
	}()
	tick := time.NewTicker(t.cfg.Poll)
	defer tick.Stop()
	for {
		if err := t.step(ctx); errors.Is(err, errShip) {
			t.log.Warn("evetail: alert not accepted; retrying", "err", err)
		} else if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// resume opens the file of the saved position (the current path, or a
// rotated sibling with the saved inode) at its offset.
func (t *Tailer) resume() error {
	b, err := os.ReadFile(t.cfg.StateFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("evetail: read state: %w", err)
	}
	if err == nil {
		if err := json.Unmarshal(b, &t.pos); err != nil {
			return fmt.Errorf("evetail: state file %s: %w", t.cfg.StateFile, err)
		}
		// The saved file: the current one, or a rotated sibling.
		cands, _ := filepath.Glob(t.cfg.Path + "*")
		for _, c := range append([]string{t.cfg.Path}, cands...) {
			f, err := os.Open(c)
			if err != nil {
				continue
			}
			fi, err := f.Stat()
			if dev, ino := fileID(fi); err == nil && dev == t.pos.Dev && ino == t.pos.Ino {
				if fi.Size() < t.pos.Offset {
					t.pos.Offset = 0 // truncated since
				}
				t.f = f
				return t.loadSpooled()
			}
			f.Close()
		}
		t.log.Warn("evetail: the file of the saved position is gone; starting the current file from its beginning", "path", t.cfg.Path)
	}
	return t.openCurrent()
}

// loadSpooled reads back the alerts the spool got after the saved position
// (shipped and synced, but the crash came before the position was written),
// so that drain skips them instead of shipping them twice.
func (t *Tailer) loadSpooled() error {
	if t.sv == nil || t.pos.Seq == nil {
		return nil
	}
	seq := *t.pos.Seq
	ids := map[string][]byte{}
	complete, err := t.sv.SpoolScanFrom(seq, func(rec []byte) bool {
		if !bytes.Contains(rec, []byte(`"ids_alert"`)) {
			return true
		}
		var r struct {
			Type string `json:"record_type"`
			ID   string `json:"record_id"`
		}
		if json.Unmarshal(rec, &r) == nil && r.Type == "ids_alert" && r.ID != "" {
			ids[r.ID] = bytes.Clone(rec)
		}
		return true
	})
	if err != nil {
		t.log.Warn("evetail: cannot read back the spool; alerts after the saved position may be shipped twice", "err", err)
	} else if !complete {
		t.log.Warn("evetail: records after the saved position were already removed from the spool; alerts after it may be shipped twice")
	}
	if len(ids) > 0 {
		t.spooled = ids
		t.log.Info("evetail: the spool already holds alerts after the saved position; not shipping them again", "alerts", len(ids))
	}
	t.hold(seq)
	return nil
}

// hold asks the spool to keep the frames from seq on (see spool.Hold).
func (t *Tailer) hold(seq uint64) {
	if t.sv == nil {
		return
	}
	if err := t.sv.SpoolHold(seq); err != nil {
		t.log.Warn("evetail: spool hold; a crash may repeat alerts", "err", err)
		return
	}
	t.heldAt = time.Now()
}

// openCurrent switches to the file now at Path, from its start. A missing
// file is not an error (Suricata not started yet).
func (t *Tailer) openCurrent() error {
	f, err := os.Open(t.cfg.Path)
	if errors.Is(err, os.ErrNotExist) {
		t.f = nil
		return nil
	}
	if err != nil {
		return fmt.Errorf("evetail: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("evetail: %w", err)
	}
	if t.f != nil {
		t.f.Close()
	}
	t.f = f
	t.pos.Dev, t.pos.Ino = fileID(fi)
	t.pos.Offset = 0
	return t.save()
}

// openNext moves from the finished file to the one written after it: the
// oldest sibling (Path, or a rotated Path.*) modified after it, so that a
// file rotated twice while the tailer was stopped is read too. Compressed
// rotations are older and skipped.
func (t *Tailer) openNext() error {
	old, err := t.f.Stat()
	if err != nil {
		return fmt.Errorf("evetail: %w", err)
	}
	cands, _ := filepath.Glob(t.cfg.Path + ".*")
	var next string
	var nextFI os.FileInfo
	for _, c := range cands {
		switch filepath.Ext(c) {
		case ".gz", ".xz", ".bz2", ".zst", ".tmp":
			continue
		}
		fi, err := os.Stat(c)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if dev, ino := fileID(fi); dev == t.pos.Dev && ino == t.pos.Ino {
			continue
		}
		if !fi.ModTime().After(old.ModTime()) {
			continue // older, or this very file
		}
		if nextFI == nil || fi.ModTime().Before(nextFI.ModTime()) {
			next, nextFI = c, fi
		}
	}
	if nextFI == nil {
		return t.openCurrent()
	}
	f, err := os.Open(next)
	if err != nil {
		return t.openCurrent()
	}
	t.f.Close()
	t.f = f
	t.pos.Dev, t.pos.Ino = fileID(nextFI)
	t.pos.Offset = 0
	t.log.Info("evetail: reading a rotated file written after the last one", "path", next)
	return t.save()
}

// step reads what is new, follows a rotation, ships and saves.
func (t *Tailer) step(ctx context.Context) error {
	if t.f == nil {
		if err := t.openCurrent(); err != nil || t.f == nil {
			return err
		}
	}
	for ctx.Err() == nil {
		if err := t.drain(ctx); err != nil {
			return err
		}
		// Rotated (a different file at Path) or truncated?
		fi, err := os.Stat(t.cfg.Path)
		if err != nil {
			return nil // renamed away, new one not created yet
		}
		if dev, ino := fileID(fi); dev != t.pos.Dev || ino != t.pos.Ino {
			if err := t.drain(nil); err != nil { // the rest of the old file, all of it
				return err
			}
			if err := t.openNext(); err != nil {
				return err
			}
			continue
		}
		if fi.Size() < t.pos.Offset {
			t.log.Info("evetail: file truncated; reading from the start", "path", t.cfg.Path)
			t.pos.Offset = 0
			if err := t.save(); err != nil {
				return err
			}
			continue
		}
		// Idle: move the spool's hold up (with the saved position), so
		// that what other producers append meanwhile, once delivered, is
		// not kept on disk for the tailer (a position write every 10 s).
		if t.sv != nil && time.Since(t.heldAt) > 10*time.Second {
			return t.save()
		}
		return nil
	}
	return nil
}

// drain ships every complete line after the position, in batches, saving
// the position after each synced batch. It returns early, between
// batches, when ctx (if not nil) ends.
func (t *Tailer) drain(ctx context.Context) error {
	for ctx == nil || ctx.Err() == nil {
		if cap(t.buf) == 0 {
			t.buf = make([]byte, 256<<10)
		}
		n, err := t.f.ReadAt(t.buf[:cap(t.buf)], t.pos.Offset)
		if n == 0 {
			if err != nil && err != io.EOF {
				return fmt.Errorf("evetail: read: %w", err)
			}
			return nil
		}
		chunk := t.buf[:n]
		last := bytes.LastIndexByte(chunk, '\n')
		if last < 0 {
			if n < cap(t.buf) {
				return nil // a partial line: wait for its end
			}
			if cap(t.buf) < maxLine { // one line longer than the buffer
				t.buf = make([]byte, 2*cap(t.buf))
				continue
			}
			// A line over maxLine is not Suricata's: skip it (its tail,
			// up to the newline, is then one more unparsable line).
			t.Bad++
			t.pos.Offset += int64(n)
			if err := t.save(); err != nil {
				return err
			}
			continue
		}
		off := t.pos.Offset
		if t.sv != nil && t.pos.Seq != nil && time.Since(t.heldAt) > 5*time.Minute {
			t.hold(*t.pos.Seq) // the spool's hold expires after 10 minutes
		}
		for _, line := range bytes.SplitAfter(chunk[:last+1], []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			if err := t.line(bytes.TrimSpace(line), off); err != nil {
				// Keep what was shipped: save the position of this line.
				if serr := t.ship.Sync(); serr != nil {
					return errors.Join(err, serr)
				}
				t.pos.Offset = off
				return errors.Join(err, t.save())
			}
			off += int64(len(line))
		}
		if err := t.ship.Sync(); err != nil {
			return fmt.Errorf("evetail: sync spool: %w", err)
		}
		t.pos.Offset = off
		if err := t.save(); err != nil {
			return err
		}
	}
	return nil
}

// line ships one eve line if it is an alert.
func (t *Tailer) line(line []byte, off int64) error {
	if len(line) == 0 {
		return nil
	}
	var ev eveEvent
	if err := json.Unmarshal(line, &ev); err != nil {
		t.Bad++
		return nil
	}
	if ev.EventType != "alert" {
		t.Skipped++
		return nil
	}
	ts, err := time.Parse("2006-01-02T15:04:05.999999-0700", ev.Timestamp)
	if err != nil {
		ts = time.Now()
	}
	id := t.recordID(off)
	t.rec = t.appendRecord(t.rec[:0], &ev, ts, id)
	// The very record (not just its id: a file truncated and written
	// again reuses offsets) is in the spool already.
	if prev, ok := t.spooled[id]; ok && bytes.Equal(prev, t.rec) {
		delete(t.spooled, id)
		if len(t.spooled) == 0 {
			t.spooled = nil
		}
		t.Respooled++
		return nil
	}
	if err := t.ship.Ship(ts, t.rec); err != nil {
		return fmt.Errorf("%w: %w", errShip, err)
	}
	t.Shipped++
	return nil
}

// errShip wraps a refused record (spool full under fail_closed, or the
// shipper closing): Run keeps the position before it and retries later.
var errShip = errors.New("evetail: ship")

type eveEvent struct {
	Timestamp string `json:"timestamp"`
	FlowID    uint64 `json:"flow_id"`
	EventType string `json:"event_type"`
	SrcIP     string `json:"src_ip"`
	SrcPort   int    `json:"src_port"`
	DestIP    string `json:"dest_ip"`
	DestPort  int    `json:"dest_port"`
	Proto     string `json:"proto"`
	AppProto  string `json:"app_proto"`
	Direction string `json:"direction"`
	Alert     struct {
		Action      string `json:"action"`
		SignatureID int64  `json:"signature_id"`
		Rev         int64  `json:"rev"`
		Signature   string `json:"signature"`
		Category    string `json:"category"`
		Severity    int    `json:"severity"`
	} `json:"alert"`
	Flow *struct {
		SrcIP    string `json:"src_ip"`
		SrcPort  int    `json:"src_port"`
		DestIP   string `json:"dest_ip"`
		DestPort int    `json:"dest_port"`
	} `json:"flow"`
	HTTP *struct {
		Hostname string `json:"hostname"`
		URL      string `json:"url"`
	} `json:"http"`
}

// appendRecord writes the ids_alert record. client_* and dst_* are the
// connection's initiator and responder (eve's flow block; without it, the
// alert's src/dest turned around for to_client alerts), the same fields
// request records carry, so the two join on the 5-tuple.
func (t *Tailer) appendRecord(b []byte, ev *eveEvent, ts time.Time, id string) []byte {
	cip, cport, dip, dport := ev.SrcIP, ev.SrcPort, ev.DestIP, ev.DestPort
	if ev.Flow != nil && ev.Flow.SrcIP != "" {
		cip, cport, dip, dport = ev.Flow.SrcIP, ev.Flow.SrcPort, ev.Flow.DestIP, ev.Flow.DestPort
	} else if ev.Direction == "to_client" {
		cip, cport, dip, dport = dip, dport, cip, cport
	}
	// Suricata writes IPv6 addresses fully expanded (2001:0db8:0000:...);
	// records use Go's canonical form, as the proxy's do.
	cip, dip = canonIP(cip), canonIP(dip)
	r := map[string]any{
		"time":          ts.UTC().Format(time.RFC3339Nano),
		"record_type":   "ids_alert",
		"record_id":     id,
		"instance_id":   t.cfg.InstanceID,
		"client_ip":     cip,
		"client_port":   cport,
		"dst_ip":        dip,
		"dst_port":      dport,
		"proto":         ev.Proto,
		"app_proto":     ev.AppProto,
		"flow_id":       strconv.FormatUint(ev.FlowID, 10),
		"signature_id":  ev.Alert.SignatureID,
		"signature_rev": ev.Alert.Rev,
		"signature":     ev.Alert.Signature,
		"category":      ev.Alert.Category,
		"severity":      ev.Alert.Severity,
		"alert_action":  ev.Alert.Action,
	}
	if ev.HTTP != nil {
		r["host"] = ev.HTTP.Hostname
		r["path"] = ev.HTTP.URL
	}
	out, _ := json.Marshal(r)
	return append(b, out...)
}

// recordID is the record_id of the line at off of the current file: stable
// for this line of this file, whatever run of the tailer reads it.
func (t *Tailer) recordID(off int64) string {
	id := sha256.Sum256([]byte(fmt.Sprintf("%d/%d/%d", t.pos.Dev, t.pos.Ino, off)))
	return "ids-" + hex.EncodeToString(id[:12])
}

// canonIP returns s in canonical form, or s unchanged when it is not an
// address.
func canonIP(s string) string {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String()
	}
	return s
}

// save writes the position atomically and durably, with the spool's next
// sequence, and moves the spool's hold there.
func (t *Tailer) save() error {
	if t.sv != nil {
		seq := t.sv.SpoolNextSeq()
		t.pos.Seq = &seq
	}
	b, _ := json.Marshal(t.pos)
	tmp := t.cfg.StateFile + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("evetail: save position: %w", err)
	}
	_, werr := f.Write(b)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("evetail: save position: %w", err)
	}
	if err := os.Rename(tmp, t.cfg.StateFile); err != nil {
		return fmt.Errorf("evetail: save position: %w", err)
	}
	if d, err := os.Open(filepath.Dir(t.cfg.StateFile)); err == nil {
		d.Sync()
		d.Close()
	}
	if t.pos.Seq != nil {
		t.hold(*t.pos.Seq)
	}
	return nil
}

// AlertRecord converts one eve.json alert line into the ids_alert record
// the tailer ships (offset 0 of an unknown file for its record_id); for
// tests and tools that need the record's shape.
func AlertRecord(line []byte, instanceID string) ([]byte, error) {
	var ev eveEvent
	if err := json.Unmarshal(line, &ev); err != nil {
		return nil, fmt.Errorf("evetail: %w", err)
	}
	if ev.EventType != "alert" {
		return nil, fmt.Errorf("evetail: event_type %q is not alert", ev.EventType)
	}
	ts, err := time.Parse("2006-01-02T15:04:05.999999-0700", ev.Timestamp)
	if err != nil {
		return nil, fmt.Errorf("evetail: timestamp: %w", err)
	}
	t := &Tailer{cfg: Config{InstanceID: instanceID}}
	return t.appendRecord(nil, &ev, ts, t.recordID(0)), nil
}
