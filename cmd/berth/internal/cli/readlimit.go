package cli

import (
	"fmt"
	"io"
	"os"
)

// maxInputFile bounds the files the CLI reads a request or its own configuration from (a
// deployment file, a step payload, a traffic policy, the CLI config): each goes into one
// request of at most a MiB, and /dev/zero must not take the machine's memory.
const maxInputFile = 1 << 20

// readFileLimit reads path, refusing files over limit bytes.
func readFileLimit(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: more than %d bytes", path, limit)
	}
	return b, nil
}
