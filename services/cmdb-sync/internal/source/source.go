// Package source reads the CMDB's host inventory from one of its sources — a file (YAML,
// JSON or CSV), an HTTP JSON endpoint, or a PostgreSQL table or query — as records: one
// map of field names to values per host, in the source's own names and types. Turning
// records into hosts (field mapping, validation) is the rows package's job.
package source

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Record is one host as a source gives it.
type Record struct {
	// Pos says where the record is, for error messages: "line 4", "item 2", "row 7".
	Pos string
	// Fields are the record's values by the source's field names. Values are strings,
	// bools, numbers (float64, int, int64, ...), []any, map[string]any or nil.
	Fields map[string]any
}

// Source is a CMDB source.
type Source interface {
	// Name describes the source for logs and health checks ("file /etc/berth/hosts.yaml").
	Name() string
	// Kind is file, http or postgres.
	Kind() string
	// Fetch reads the inventory. changed is false when the source says (or it can tell)
	// that nothing changed since the last successful Fetch; records is nil then. An error
	// means the inventory could not be read at all (unreachable, unparsable).
	Fetch(ctx context.Context) (records []Record, changed bool, err error)
}

// ErrFormat is wrapped by errors about a document that does not have the expected shape.
var ErrFormat = errors.New("source: bad format")

// itemsOf finds the list of hosts in a decoded JSON or YAML document: the document itself
// when it is a list, else the list at path (dot separated keys; default "hosts").
func itemsOf(doc any, path string) ([]any, error) {
	if path == "" {
		if l, ok := doc.([]any); ok {
			return l, nil
		}
		path = "hosts"
	}
	cur := doc
	for key := range strings.SplitSeq(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%w: want a list of hosts or an object with %q holding one, found %s", ErrFormat, path, kindOf(cur))
		}
		cur, ok = m[key]
		if !ok {
			return nil, fmt.Errorf("%w: no %q key (keys: %s)", ErrFormat, path, strings.Join(slices.Sorted(mapKeys(m)), ", "))
		}
	}
	l, ok := cur.([]any)
	if !ok {
		return nil, fmt.Errorf("%w: %q is %s, want a list of hosts", ErrFormat, path, kindOf(cur))
	}
	return l, nil
}

func mapKeys(m map[string]any) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	case string:
		return "a string"
	default:
		return fmt.Sprintf("a %T", v)
	}
}

// recordsOf turns a list of items into records; every item must be an object.
func recordsOf(items []any, what string) ([]Record, error) {
	recs := make([]Record, 0, len(items))
	for i, it := range items {
		m, ok := it.(map[string]any)
		if !ok {
			// A scalar where a host should be is a row of its own that is bad; keep it
			// so that it is reported, not the whole inventory refused.
			m = map[string]any{"$error": fmt.Sprintf("%s %d is %s, want an object", what, i+1, kindOf(it))}
		}
		recs = append(recs, Record{Pos: fmt.Sprintf("%s %d", what, i+1), Fields: m})
	}
	return recs, nil
}

// digest hashes records, to tell an unchanged inventory from a changed one.
func digest(recs []Record) [32]byte {
	b, _ := json.Marshal(recs)
	return sha256.Sum256(b)
}
