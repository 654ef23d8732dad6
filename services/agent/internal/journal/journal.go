// Package journal is the agent's local record of the steps it accepted, which makes a step
// run at most once per (task, step, attempt) across agent restarts.
//
// It is an append-only file of records, each fsynced before the call that wrote it returns:
// a step is recorded as accepted before its plugin starts and as ended (with its result)
// after the plugin ends; the highest fencing token seen per task is recorded before any
// request carrying it is acted on. On open the file is replayed: a step accepted but never
// ended was running (or waiting to run) when the agent stopped, so Open records it as
// interrupted, and from then on it is answered with that result and never run again
// under the same attempt.
//
// Record format, one per line: 8 hex digits of the CRC-32C of the JSON, a space, the JSON
// of a record, a newline. A torn last line (the agent died mid-write) is cut off on open;
// a bad line followed by good ones is corruption and Open fails naming the line.
//
// The file is rewritten (compacted) on open and when it grows past a few times what it
// holds; ended steps older than the retention are dropped then, with their tokens.
package journal

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/services/agent/internal/proc"
)

// FileName is the journal's file name in its directory.
const FileName = "steps.journal"

// DefaultRetention is how long ended steps are remembered when Options.Retention is 0.
const DefaultRetention = 7 * 24 * time.Hour

// compactMinBytes is the smallest file that is compacted while running.
const compactMinBytes = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Key names a step.
type Key struct {
	Task, Step string
}

func (k Key) String() string { return k.Task + "/" + k.Step }

// Entry is what the journal knows of a step: its latest attempt.
type Entry struct {
	Key
	// Attempt is the latest attempt accepted.
	Attempt uint32
	// Token is the fencing token of the request that started it.
	Token uint64
	// Hash identifies the request's contents (plugin, action, arguments, payload), so that
	// a different request under the same attempt is told apart.
	Hash string
	// Plugin and Action are what runs.
	Plugin, Action string
	// Started is set once the plugin may have started (it is set before it starts).
	Started bool
	// Group is the process group of an executable plugin once it started, so that what it
	// leaves behind can be killed when the agent died under it.
	Group proc.Group
	// AcceptedAt is when the step was accepted.
	AcceptedAt time.Time
	// Result is set once the attempt ended.
	Result *agentv1.StepResult
	// EndedAt is when it ended.
	EndedAt time.Time
}

// Done reports whether the attempt ended.
func (e *Entry) Done() bool { return e.Result != nil }

// record is one line of the file.
type record struct {
	Op      string    `json:"op"` // token, accept, start, end
	Task    string    `json:"task"`
	Step    string    `json:"step,omitempty"`
	Attempt uint32    `json:"attempt,omitempty"`
	Token   uint64    `json:"token,omitempty"`
	Hash    string    `json:"hash,omitempty"`
	Plugin  string    `json:"plugin,omitempty"`
	Action  string    `json:"action,omitempty"`
	Started bool      `json:"started,omitempty"`
	At      time.Time `json:"at"`
	// Group is the process group of a group record (and of an accept record written by a
	// compaction).
	Group *proc.Group `json:"group,omitempty"`
	// Result is the binary StepResult of an end record.
	Result []byte `json:"result,omitempty"`
}

// Options tune a Journal.
type Options struct {
	// Retention is how long an ended step is remembered; zero means DefaultRetention.
	Retention time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Journal is the open journal. It is safe for concurrent use.
type Journal struct {
	path string
	opts Options

	mu      sync.Mutex
	f       *os.File
	size    int64
	live    int64 // bytes a compacted file would take, roughly
	entries map[Key]*Entry
	tokens  map[string]token
}

type token struct {
	value uint64
	at    time.Time
}

// Open replays the journal in dir (creating it when missing), records every step that was
// accepted but never ended as interrupted, compacts the file, and returns the journal with
// the entries it just marked interrupted (oldest first) for the caller to report.
func Open(dir string, opts Options) (*Journal, []*Entry, error) {
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	j := &Journal{path: filepath.Join(dir, FileName), opts: opts, entries: map[Key]*Entry{}, tokens: map[string]token{}}
	if err := j.replay(); err != nil {
		return nil, nil, err
	}
	var interrupted []*Entry
	now := opts.Now()
	for _, e := range j.entries {
		if e.Done() {
			continue
		}
		msg := "the agent stopped before the step started; it did not run and was not run again"
		if e.Started {
			msg = "the agent stopped while the step was running; its outcome is unknown and it was not run again"
		}
		e.Result = &agentv1.StepResult{
			TaskId: e.Task, StepId: e.Step, Attempt: e.Attempt,
			State: agentv1.StepState_STEP_STATE_INTERRUPTED, ExitCode: -1,
			FailureClass: agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE,
			Message:      msg, Plugin: e.Plugin, Action: e.Action, FencingToken: e.Token,
			StartedAt: timestamppb.New(e.AcceptedAt), EndedAt: timestamppb.New(now),
		}
		e.EndedAt = now
		interrupted = append(interrupted, e)
	}
	sortEntries(interrupted)
	// The interrupted results reach the disk through the compaction, which writes every
	// entry as it now is.
	if err := j.compactLocked(); err != nil {
		return nil, nil, err
	}
	return j, interrupted, nil
}

func sortEntries(es []*Entry) {
	for i := 1; i < len(es); i++ {
		for k := i; k > 0 && es[k].AcceptedAt.Before(es[k-1].AcceptedAt); k-- {
			es[k], es[k-1] = es[k-1], es[k]
		}
	}
}

// replay reads the file into memory, cutting off a torn last line.
func (j *Journal) replay() error {
	f, err := os.OpenFile(j.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open journal: %w", err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var (
		off     int64
		line    int
		badLine int
		badErr  error
		badOff  int64
	)
	for {
		b, err := r.ReadBytes('\n')
		if len(b) == 0 && errors.Is(err, io.EOF) {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read journal %s: %w", j.path, err)
		}
		line++
		torn := errors.Is(err, io.EOF) // no newline: the last write did not finish
		var rec record
		derr := decode(b, &rec)
		if torn && derr == nil {
			derr = errors.New("no newline")
		}
		if derr != nil {
			if badErr == nil {
				badLine, badErr, badOff = line, derr, off
			}
			off += int64(len(b))
			if torn {
				break
			}
			continue
		}
		if badErr != nil {
			return fmt.Errorf("journal %s is corrupt at line %d (%v) with good records after it; "+
				"move the file aside to start with an empty journal (steps it recorded may then run again)", j.path, badLine, badErr)
		}
		if err := j.apply(rec); err != nil {
			return fmt.Errorf("journal %s line %d: %w", j.path, line, err)
		}
		off += int64(len(b))
	}
	if badErr != nil {
		// Only the tail is bad: the agent died while writing it. Its step was not acted on.
		if err := f.Truncate(badOff); err != nil {
			return fmt.Errorf("cut torn tail of journal %s at line %d: %w", j.path, badLine, err)
		}
	}
	return nil
}

func decode(b []byte, rec *record) error {
	b = bytes.TrimSuffix(b, []byte("\n"))
	if len(b) < 10 || b[8] != ' ' {
		return errors.New("malformed record")
	}
	want, err := strconv.ParseUint(string(b[:8]), 16, 32)
	if err != nil {
		return errors.New("malformed checksum")
	}
	body := b[9:]
	if crc32.Checksum(body, castagnoli) != uint32(want) {
		return errors.New("checksum mismatch")
	}
	if err := json.Unmarshal(body, rec); err != nil {
		return fmt.Errorf("decode record: %w", err)
	}
	return nil
}

func encode(rec record) ([]byte, error) {
	body, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(body)+10)
	out = fmt.Appendf(out, "%08x ", crc32.Checksum(body, castagnoli))
	out = append(out, body...)
	return append(out, '\n'), nil
}

// apply changes the in-memory state by one record.
func (j *Journal) apply(rec record) error {
	if rec.Token > 0 {
		if t := j.tokens[rec.Task]; rec.Token >= t.value {
			j.tokens[rec.Task] = token{value: rec.Token, at: rec.At}
		}
	}
	k := Key{rec.Task, rec.Step}
	switch rec.Op {
	case "token":
	case "accept":
		e := &Entry{Key: k, Attempt: rec.Attempt, Token: rec.Token, Hash: rec.Hash,
			Plugin: rec.Plugin, Action: rec.Action, Started: rec.Started, AcceptedAt: rec.At}
		if rec.Group != nil {
			e.Group = *rec.Group
		}
		j.entries[k] = e
	case "group":
		if e := j.entries[k]; e != nil && e.Attempt == rec.Attempt && rec.Group != nil {
			e.Group = *rec.Group
		}
	case "start":
		if e := j.entries[k]; e != nil && e.Attempt == rec.Attempt {
			e.Started = true
		}
	case "end":
		e := j.entries[k]
		if e == nil || e.Attempt != rec.Attempt {
			return fmt.Errorf("end of %s attempt %d that was never accepted", k, rec.Attempt)
		}
		res := &agentv1.StepResult{}
		if err := proto.Unmarshal(rec.Result, res); err != nil {
			return fmt.Errorf("decode result of %s: %w", k, err)
		}
		e.Result, e.EndedAt = res, rec.At
	default:
		return fmt.Errorf("unknown record op %q", rec.Op)
	}
	return nil
}

// appendLocked writes records and fsyncs the file.
func (j *Journal) appendLocked(recs ...record) error {
	var buf []byte
	for _, rec := range recs {
		b, err := encode(rec)
		if err != nil {
			return fmt.Errorf("encode journal record: %w", err)
		}
		buf = append(buf, b...)
	}
	if _, err := j.f.Write(buf); err != nil {
		return fmt.Errorf("write journal %s: %w", j.path, err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("sync journal %s: %w", j.path, err)
	}
	j.size += int64(len(buf))
	return nil
}

// Token is the highest fencing token seen for task (0 when none).
func (j *Journal) Token(task string) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.tokens[task].value
}

// RaiseToken records token as the highest of task when it is higher than the one known.
func (j *Journal) RaiseToken(task string, tok uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if tok <= j.tokens[task].value {
		return nil
	}
	now := j.opts.Now()
	if err := j.appendLocked(record{Op: "token", Task: task, Token: tok, At: now}); err != nil {
		return err
	}
	j.tokens[task] = token{value: tok, at: now}
	return nil
}

// Get returns a copy of the entry of a step.
func (j *Journal) Get(k Key) (Entry, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	e, ok := j.entries[k]
	if !ok {
		return Entry{}, false
	}
	return *e, true
}

// Accept records a new attempt of a step (and its token, when higher than the task's),
// replacing what was known of the step. started says whether the plugin starts right away;
// otherwise Start must be called before it does.
func (j *Journal) Accept(e Entry) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if e.AcceptedAt.IsZero() {
		e.AcceptedAt = j.opts.Now()
	}
	rec := record{Op: "accept", Task: e.Task, Step: e.Step, Attempt: e.Attempt, Token: e.Token, Hash: e.Hash,
		Plugin: e.Plugin, Action: e.Action, Started: e.Started, At: e.AcceptedAt}
	if err := j.appendLocked(rec); err != nil {
		return err
	}
	if err := j.apply(rec); err != nil {
		return err
	}
	j.live += 256
	return j.maybeCompactLocked()
}

// Start records that an accepted attempt is about to start.
func (j *Journal) Start(k Key, attempt uint32) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	rec := record{Op: "start", Task: k.Task, Step: k.Step, Attempt: attempt, At: j.opts.Now()}
	if err := j.appendLocked(rec); err != nil {
		return err
	}
	return j.apply(rec)
}

// SetGroup records the process group of a started attempt. It is written but not synced:
// it only serves to clean up after an agent crash, and a crashed process's writes survive
// in the page cache; the attempt's end record syncs it anyway.
func (j *Journal) SetGroup(k Key, attempt uint32, g proc.Group) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	rec := record{Op: "group", Task: k.Task, Step: k.Step, Attempt: attempt, At: j.opts.Now(), Group: &g}
	b, err := encode(rec)
	if err != nil {
		return fmt.Errorf("encode journal record: %w", err)
	}
	if _, err := j.f.Write(b); err != nil {
		return fmt.Errorf("write journal %s: %w", j.path, err)
	}
	j.size += int64(len(b))
	return j.apply(rec)
}

// End records the result of an attempt.
func (j *Journal) End(k Key, attempt uint32, res *agentv1.StepResult) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	b, err := proto.Marshal(res)
	if err != nil {
		return fmt.Errorf("encode result of %s: %w", k, err)
	}
	rec := record{Op: "end", Task: k.Task, Step: k.Step, Attempt: attempt, At: j.opts.Now(), Result: b}
	if err := j.appendLocked(rec); err != nil {
		return err
	}
	if err := j.apply(rec); err != nil {
		return err
	}
	j.live += int64(len(b)) * 2
	return nil
}

// maybeCompactLocked rewrites the file when it holds mostly history.
func (j *Journal) maybeCompactLocked() error {
	if j.size < compactMinBytes || j.size < 4*j.live {
		return nil
	}
	return j.compactLocked()
}

// compactLocked drops ended steps older than the retention (and the tokens of tasks with
// nothing left), writes what is left to a new file, syncs it, and renames it over the old
// one.
func (j *Journal) compactLocked() error {
	now := j.opts.Now()
	cutoff := now.Add(-j.opts.Retention)
	keep := map[string]bool{}
	for k, e := range j.entries {
		if e.Done() && e.EndedAt.Before(cutoff) {
			delete(j.entries, k)
			continue
		}
		keep[k.Task] = true
	}
	for task, t := range j.tokens {
		if !keep[task] && t.at.Before(cutoff) {
			delete(j.tokens, task)
		}
	}
	var buf []byte
	var live int64
	add := func(rec record) error {
		b, err := encode(rec)
		if err != nil {
			return fmt.Errorf("encode journal record: %w", err)
		}
		buf = append(buf, b...)
		return nil
	}
	for task, t := range j.tokens {
		if err := add(record{Op: "token", Task: task, Token: t.value, At: t.at}); err != nil {
			return err
		}
	}
	es := make([]*Entry, 0, len(j.entries))
	for _, e := range j.entries {
		es = append(es, e)
	}
	sortEntries(es)
	for _, e := range es {
		rec := record{Op: "accept", Task: e.Task, Step: e.Step, Attempt: e.Attempt, Token: e.Token, Hash: e.Hash,
			Plugin: e.Plugin, Action: e.Action, Started: e.Started, At: e.AcceptedAt}
		if e.Group.PGID > 0 && !e.Done() {
			g := e.Group
			rec.Group = &g
		}
		if err := add(rec); err != nil {
			return err
		}
		if e.Done() {
			b, err := proto.Marshal(e.Result)
			if err != nil {
				return fmt.Errorf("encode result of %s: %w", e.Key, err)
			}
			if err := add(record{Op: "end", Task: e.Task, Step: e.Step, Attempt: e.Attempt, At: e.EndedAt, Result: b}); err != nil {
				return err
			}
		}
	}
	live = int64(len(buf))
	tmp := j.path + ".tmp"
	if err := writeSynced(tmp, buf); err != nil {
		return fmt.Errorf("compact journal %s: %w", j.path, err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
		return fmt.Errorf("compact journal %s: %w", j.path, err)
	}
	if err := syncDir(filepath.Dir(j.path)); err != nil {
		return fmt.Errorf("compact journal %s: %w", j.path, err)
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open journal %s: %w", j.path, err)
	}
	if j.f != nil {
		_ = j.f.Close()
	}
	j.f, j.size, j.live = f, int64(len(buf)), live
	return nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Close closes the file.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	if err != nil {
		return fmt.Errorf("close journal %s: %w", j.path, err)
	}
	return nil
}
