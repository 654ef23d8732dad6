package coordclient

import (
	"fmt"
	"strings"
)

// MaxPathBytes is the longest path the store accepts.
const MaxPathBytes = 4096

// MaxValueBytes is the largest value the store accepts (4 MiB).
const MaxValueBytes = 4 << 20

// ValidatePath checks that p is a well-formed node path, the rules of the store: it starts
// with "/", has no empty, "." or ".." segment, no NUL byte, no trailing "/", and is at most
// MaxPathBytes long. The root "/" is accepted only when allowRoot is set (it can be listed
// and watched, never written). The error wraps ErrInvalidPath and says what is wrong.
func ValidatePath(p string, allowRoot bool) error {
	switch {
	case p == "":
		return fmt.Errorf("%w: empty path", ErrInvalidPath)
	case len(p) > MaxPathBytes:
		return fmt.Errorf("%w: %d bytes long, over the %d-byte limit", ErrInvalidPath, len(p), MaxPathBytes)
	case p[0] != '/':
		return fmt.Errorf("%w: %q does not start with \"/\"", ErrInvalidPath, p)
	case p == "/":
		if allowRoot {
			return nil
		}
		return fmt.Errorf("%w: the root \"/\" is not a node", ErrInvalidPath)
	}
	if i := strings.IndexByte(p, 0); i >= 0 {
		return fmt.Errorf("%w: %q has a NUL byte at offset %d", ErrInvalidPath, p, i)
	}
	start := 1
	for i := 1; i <= len(p); i++ {
		if i < len(p) && p[i] != '/' {
			continue
		}
		switch seg := p[start:i]; seg {
		case "":
			if i == len(p) {
				return fmt.Errorf("%w: %q ends with \"/\"", ErrInvalidPath, p)
			}
			return fmt.Errorf("%w: %q has an empty segment at offset %d", ErrInvalidPath, p, start)
		case ".", "..":
			return fmt.Errorf("%w: %q has a %q segment at offset %d", ErrInvalidPath, p, seg, start)
		}
		start = i + 1
	}
	return nil
}

// validateSequentialPrefix checks the path of a sequential put: a valid path, or a valid
// path followed by "/" (the suffix then becomes a child's whole name).
func validateSequentialPrefix(p string) error {
	if p == "/" {
		return nil
	}
	if strings.HasSuffix(p, "/") {
		return ValidatePath(strings.TrimSuffix(p, "/"), false)
	}
	return ValidatePath(p, false)
}
