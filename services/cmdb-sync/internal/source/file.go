package source

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// File reads a YAML, JSON or CSV file, again only when its modification time or size
// changed (polling; a file replaced by rename is seen too).
type File struct {
	path, format, itemsPath string

	// Only Fetch uses these; Fetch is not called concurrently.
	mtime time.Time
	size  int64
	read  bool
}

// NewFile returns a file source. format is yaml, json or csv; empty guesses it from the
// extension (.yaml, .yml, .json, .csv). itemsPath is where the list of hosts is in a
// YAML or JSON document that is not itself a list (default "hosts").
func NewFile(path, format, itemsPath string) (*File, error) {
	if path == "" {
		return nil, fmt.Errorf("file source: empty path")
	}
	if format == "" {
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml":
			format = "yaml"
		case ".json":
			format = "json"
		case ".csv":
			format = "csv"
		default:
			return nil, fmt.Errorf("file source %s: cannot tell the format from the extension; set it (yaml, json or csv)", path)
		}
	}
	switch format {
	case "yaml", "json", "csv":
	default:
		return nil, fmt.Errorf("file source %s: format %q, want yaml, json or csv", path, format)
	}
	return &File{path: path, format: format, itemsPath: itemsPath}, nil
}

// Name implements Source.
func (f *File) Name() string { return "file " + f.path }

// Kind implements Source.
func (f *File) Kind() string { return "file" }

// Fetch implements Source.
func (f *File) Fetch(ctx context.Context) ([]Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	st, err := os.Stat(f.path)
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", f.path, err)
	}
	if f.read && st.ModTime().Equal(f.mtime) && st.Size() == f.size {
		return nil, false, nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", f.path, err)
	}
	recs, err := parseDocument(b, f.format, f.itemsPath)
	if err != nil {
		return nil, false, fmt.Errorf("parse %s: %w", f.path, err)
	}
	f.mtime, f.size, f.read = st.ModTime(), st.Size(), true
	return recs, true, nil
}

// parseDocument reads a whole document of the format.
func parseDocument(b []byte, format, itemsPath string) ([]Record, error) {
	switch format {
	case "csv":
		return parseCSV(b)
	case "json":
		var doc any
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		if err := dec.Decode(&doc); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFormat, err)
		}
		items, err := itemsOf(normalizeJSON(doc), itemsPath)
		if err != nil {
			return nil, err
		}
		return recordsOf(items, "item")
	default:
		var doc any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFormat, err)
		}
		items, err := itemsOf(normalizeYAML(doc), itemsPath)
		if err != nil {
			return nil, err
		}
		return recordsOf(items, "item")
	}
}

// normalizeJSON turns json.Number into int64 or float64.
func normalizeJSON(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = normalizeJSON(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = normalizeJSON(x[k])
		}
	}
	return v
}

// normalizeYAML turns map[any]any (non-string keys) into map[string]any.
func normalizeYAML(v any) any {
	switch x := v.(type) {
	case []any:
		for i := range x {
			x[i] = normalizeYAML(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = normalizeYAML(x[k])
		}
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, val := range x {
			m[fmt.Sprint(k)] = normalizeYAML(val)
		}
		return m
	}
	return v
}

// parseCSV reads a CSV file whose first line names the fields. Empty cells are absent
// fields.
func parseCSV(b []byte) ([]Record, error) {
	r := csv.NewReader(bytes.NewReader(b))
	r.FieldsPerRecord = -1
	r.TrimLeadingSpace = true
	r.Comment = '#'
	header, err := r.Read()
	if err == io.EOF {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrFormat, err)
	}
	for i, h := range header {
		header[i] = strings.TrimSpace(h)
		if header[i] == "" {
			return nil, fmt.Errorf("%w: header: column %d has no name", ErrFormat, i+1)
		}
	}
	var recs []Record
	for {
		row, err := r.Read()
		if err == io.EOF {
			return recs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFormat, err)
		}
		line, _ := r.FieldPos(0)
		m := map[string]any{}
		if len(row) != len(header) {
			m["$error"] = fmt.Sprintf("%d cells, the header names %d", len(row), len(header))
		}
		for i, cell := range row {
			if i < len(header) && strings.TrimSpace(cell) != "" {
				m[header[i]] = strings.TrimSpace(cell)
			}
		}
		recs = append(recs, Record{Pos: fmt.Sprintf("line %d", line), Fields: m})
	}
}
