package tree

import (
	"fmt"
	"strings"
)

// MaxPathBytes is the longest path the store accepts.
const MaxPathBytes = 4096

// MaxValueBytes is the largest value the store accepts (4 MiB).
const MaxValueBytes = 4 << 20

// ValidatePath checks that p is a well-formed node path: it starts with "/", has no empty,
// "." or ".." segment, no NUL byte, no trailing "/", and is at most MaxPathBytes long. The
// root "/" is accepted only when allowRoot is set (it can be listed and watched, never
// written). The error wraps ErrInvalidPath and says what is wrong and where.
func ValidatePath(p string, allowRoot bool) error {
	if p == "" {
		return fmt.Errorf("%w: empty path", ErrInvalidPath)
	}
	if len(p) > MaxPathBytes {
		return fmt.Errorf("%w: %d bytes long, over the %d-byte limit", ErrInvalidPath, len(p), MaxPathBytes)
	}
	if p[0] != '/' {
		return fmt.Errorf("%w: %q does not start with \"/\"", ErrInvalidPath, p)
	}
	if p == "/" {
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
		seg := p[start:i]
		switch seg {
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

// Parent returns the parent path of a valid path ("/a/b" → "/a", "/a" → "/").
func Parent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

// Segments splits a valid path into its segments; the root has none.
func Segments(p string) []string {
	if p == "/" {
		return nil
	}
	return strings.Split(p[1:], "/")
}

// PathLess orders paths component by component: it is byte order except that "/" sorts
// before every other byte. A node is therefore immediately followed by its whole subtree
// ("/a", "/a/b", "/a/b/c", "/a-x"), which makes children and subtree listings range scans.
func PathLess(a, b string) bool {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		if ca == '/' {
			return true
		}
		if cb == '/' {
			return false
		}
		return ca < cb
	}
	return len(a) < len(b)
}

// subtreePrefix is the prefix every descendant of p starts with.
func subtreePrefix(p string) string {
	if p == "/" {
		return "/"
	}
	return p + "/"
}

// InSubtree reports whether path is p or one of its descendants.
func InSubtree(path, p string) bool {
	return path == p || strings.HasPrefix(path, subtreePrefix(p))
}
