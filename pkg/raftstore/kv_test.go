package raftstore

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
)

// kvSM is the test state machine: an append-only key-value map fed "key=value" entries.
// Apply returns the entry's index. Its hash covers every pair, so two members with the
// same hash hold the same state.
type kvSM struct {
	mu       sync.Mutex
	data     map[string]string
	applied  uint64
	restores int
}

func newKVSM() *kvSM { return &kvSM{data: map[string]string{}} }

func (s *kvSM) Apply(e Entry) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.Index <= s.applied {
		panic(fmt.Sprintf("apply index %d after %d", e.Index, s.applied))
	}
	k, v, ok := strings.Cut(string(e.Data), "=")
	if !ok {
		return fmt.Errorf("bad entry %q", e.Data)
	}
	s.data[k] += v
	s.applied = e.Index
	return e.Index
}

func (s *kvSM) Snapshot() (SnapshotSource, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &kvSnapshot{data: maps.Clone(s.data), applied: s.applied}, nil
}

func (s *kvSM) Restore(r io.Reader) error {
	data := map[string]string{}
	var applied uint64
	br := bufio.NewReader(r)
	if _, err := fmt.Fscanf(br, "applied %d\n", &applied); err != nil {
		return fmt.Errorf("read header: %w", err)
	}
	for {
		line, err := br.ReadString('\n')
		if err == io.EOF && line == "" {
			break
		}
		if err != nil {
			return fmt.Errorf("read pair: %w", err)
		}
		k, v, ok := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		if !ok {
			return fmt.Errorf("bad pair %q", line)
		}
		data[k] = v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data, s.applied = data, applied
	s.restores++
	return nil
}

func (s *kvSM) get(k string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[k]
	return v, ok
}

func (s *kvSM) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.data)
}

func (s *kvSM) hash() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(s.data)) {
		fmt.Fprintf(h, "%s=%s\n", k, s.data[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

type kvSnapshot struct {
	data    map[string]string
	applied uint64
}

func (s *kvSnapshot) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriter(w)
	var n int
	c, _ := fmt.Fprintf(bw, "applied %d\n", s.applied)
	n += c
	for _, k := range slices.Sorted(maps.Keys(s.data)) {
		c, _ := fmt.Fprintf(bw, "%s=%s\n", k, s.data[k])
		n += c
	}
	return int64(n), bw.Flush()
}

func (s *kvSnapshot) Close() error { return nil }
