package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadFileLimit checks that an endless file (/dev/zero) is refused after the limit
// instead of filling memory, and that a file within it is read whole.
func TestReadFileLimit(t *testing.T) {
	if _, err := readFileLimit("/dev/zero", 1<<10); err == nil || !strings.Contains(err.Error(), "more than 1024 bytes") {
		t.Fatalf("readFileLimit(/dev/zero): got %v, want more than 1024 bytes", err)
	}
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("12345"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := readFileLimit(p, 5); err != nil || string(b) != "12345" {
		t.Fatalf("readFileLimit of 5 bytes with limit 5: got %q, %v", b, err)
	}
	if _, err := readFileLimit(p, 4); err == nil {
		t.Fatal("readFileLimit of 5 bytes with limit 4: nil error")
	}
}
