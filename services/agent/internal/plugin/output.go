package plugin

import (
	"bytes"
	"fmt"
	"sync"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
)

// Output limits.
const (
	// MaxLineBytes is the longest line passed on; a longer one is split.
	MaxLineBytes = 4096
	// TailLines is how many of the last lines a result keeps.
	TailLines = 20
)

// LinesFunc receives complete lines of one stream. It is called with the Output's lock
// held, one call at a time, in the order the lines were written.
type LinesFunc func(stream agentv1.Stream, lines []string)

// Output collects a step's stdout and stderr: it splits them into lines, passes each write's
// complete lines to a LinesFunc, keeps the last TailLines lines, and stops passing lines on
// once max bytes went through (the rest is read and dropped, so the writer never blocks).
// It is safe for concurrent use; Stdout and Stderr may be written from two goroutines.
type Output struct {
	mu        sync.Mutex
	emit      LinesFunc
	max       int64
	total     int64
	truncated bool
	partial   map[agentv1.Stream][]byte
	tail      []string
}

// NewOutput returns an Output that passes lines to emit (nil: only keep the tail) and
// drops everything after max bytes (0 means no cap).
func NewOutput(emit LinesFunc, max int64) *Output {
	return &Output{emit: emit, max: max, partial: map[agentv1.Stream][]byte{}}
}

// Stdout is the writer of the standard output stream.
func (o *Output) Stdout() *StreamWriter {
	return &StreamWriter{o: o, stream: agentv1.Stream_STREAM_STDOUT}
}

// Stderr is the writer of the standard error stream.
func (o *Output) Stderr() *StreamWriter {
	return &StreamWriter{o: o, stream: agentv1.Stream_STREAM_STDERR}
}

// StreamWriter is one stream of an Output.
type StreamWriter struct {
	o      *Output
	stream agentv1.Stream
}

// Write splits p into lines; it never fails and always consumes all of p.
func (w *StreamWriter) Write(p []byte) (int, error) {
	w.o.write(w.stream, p)
	return len(p), nil
}

// Printf writes one formatted line.
func (w *StreamWriter) Printf(format string, args ...any) {
	w.o.write(w.stream, []byte(fmt.Sprintf(format, args...)+"\n"))
}

func (o *Output) write(stream agentv1.Stream, p []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.truncated {
		return
	}
	if o.max > 0 && o.total+int64(len(p)) > o.max {
		p = p[:o.max-o.total]
		o.truncated = true
	}
	o.total += int64(len(p))
	buf := append(o.partial[stream], p...)
	var lines []string
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		lines = appendLine(lines, buf[:i])
		buf = buf[i+1:]
	}
	for len(buf) >= MaxLineBytes {
		lines = append(lines, string(buf[:MaxLineBytes]))
		buf = buf[MaxLineBytes:]
	}
	o.partial[stream] = append([]byte(nil), buf...)
	if o.truncated {
		if rest := o.partial[stream]; len(rest) > 0 {
			lines = appendLine(lines, rest)
			o.partial[stream] = nil
		}
		lines = append(lines, fmt.Sprintf("[berth: output truncated after %d bytes]", o.max))
	}
	o.passLocked(stream, lines)
}

// appendLine appends one line, without a trailing carriage return, split at MaxLineBytes.
func appendLine(lines []string, b []byte) []string {
	b = bytes.TrimSuffix(b, []byte("\r"))
	for len(b) > MaxLineBytes {
		lines = append(lines, string(b[:MaxLineBytes]))
		b = b[MaxLineBytes:]
	}
	return append(lines, string(b))
}

func (o *Output) passLocked(stream agentv1.Stream, lines []string) {
	if len(lines) == 0 {
		return
	}
	o.tail = append(o.tail, lines...)
	if n := len(o.tail); n > TailLines {
		o.tail = append(o.tail[:0:0], o.tail[n-TailLines:]...)
	}
	if o.emit != nil {
		o.emit(stream, lines)
	}
}

// Flush passes on the unfinished last line of each stream. Call it once the writers are
// done.
func (o *Output) Flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range []agentv1.Stream{agentv1.Stream_STREAM_STDOUT, agentv1.Stream_STREAM_STDERR} {
		if rest := o.partial[s]; len(rest) > 0 {
			o.partial[s] = nil
			o.passLocked(s, appendLine(nil, rest))
		}
	}
}

// Tail returns the last lines written (at most TailLines).
func (o *Output) Tail() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.tail...)
}

// Truncated reports whether output beyond the cap was dropped.
func (o *Output) Truncated() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.truncated
}
