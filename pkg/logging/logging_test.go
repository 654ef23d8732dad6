package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestFormatsAndLevels(t *testing.T) {
	tests := []struct {
		cfg      Config
		wantJSON bool
		debug    bool
		err      string
	}{
		{cfg: Config{}, wantJSON: true},
		{cfg: Config{Format: "text", Level: "debug"}, debug: true},
		{cfg: Config{Format: "JSON", Level: "warn"}, wantJSON: true},
		{cfg: Config{Format: "xml"}, err: `log format "xml"`},
		{cfg: Config{Level: "loud"}, err: `log level "loud"`},
	}
	for _, tt := range tests {
		t.Run(tt.cfg.Format+"/"+tt.cfg.Level, func(t *testing.T) {
			var buf bytes.Buffer
			l, err := New(tt.cfg, &buf)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("New(%+v): got %v, want error containing %q", tt.cfg, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%+v): %v", tt.cfg, err)
			}
			l.Debug("dbg")
			l.Error("hello", "k", "v")
			out := buf.String()
			if got := strings.Contains(out, "dbg"); got != tt.debug {
				t.Fatalf("debug line present: got %v, want %v (output %q)", got, tt.debug, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			last := lines[len(lines)-1]
			var m map[string]any
			isJSON := json.Unmarshal([]byte(last), &m) == nil
			if isJSON != tt.wantJSON {
				t.Fatalf("JSON output: got %v, want %v (line %q)", isJSON, tt.wantJSON, last)
			}
		})
	}
}
