package tree

import (
	"errors"
	"strings"
	"testing"
)

func TestValidatePath(t *testing.T) {
	tests := []struct {
		path      string
		allowRoot bool
		ok        bool
	}{
		{"/a", false, true},
		{"/berth/hosts/h-017", false, true},
		{"/a.b/..c/.d", false, true},
		{"/", true, true},
		{"/", false, false},
		{"", true, false},
		{"a", false, false},
		{"/a/", false, false},
		{"//a", false, false},
		{"/a//b", false, false},
		{"/a/./b", false, false},
		{"/a/..", false, false},
		{"/a\x00b", false, false},
		{"/" + strings.Repeat("x", MaxPathBytes-1), false, true},
		{"/" + strings.Repeat("x", MaxPathBytes), false, false},
	}
	for _, tt := range tests {
		err := ValidatePath(tt.path, tt.allowRoot)
		if (err == nil) != tt.ok {
			t.Errorf("ValidatePath(%.40q, %v): got %v, want ok=%v", tt.path, tt.allowRoot, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidPath) {
			t.Errorf("ValidatePath(%.40q): got %v, want it to wrap ErrInvalidPath", tt.path, err)
		}
	}
}

// FuzzValidatePath checks the path parser against an independent definition and checks
// that the order of valid paths keeps each subtree contiguous.
func FuzzValidatePath(f *testing.F) {
	for _, s := range []string{"/a", "/a/b", "/", "", "a", "/a/", "//", "/a/../b", "/a\x00", "/a-b/c", "/./"} {
		f.Add(s, "/a/b")
	}
	f.Fuzz(func(t *testing.T, p, q string) {
		err := ValidatePath(p, true)
		want := referenceValid(p)
		if (err == nil) != want {
			t.Fatalf("ValidatePath(%q): got %v, want valid=%v", p, err, want)
		}
		if err != nil {
			return
		}
		if p != "/" && Parent(p) != "/" {
			if perr := ValidatePath(Parent(p), false); perr != nil {
				t.Fatalf("Parent(%q) = %q is invalid: %v", p, Parent(p), perr)
			}
		}
		if ValidatePath(q, true) != nil || p == q {
			return
		}
		// Order: exactly one of p<q, q<p; and a descendant of p sorts between p and any
		// path after p that is not in p's subtree.
		if PathLess(p, q) == PathLess(q, p) {
			t.Fatalf("PathLess not a strict order on %q, %q", p, q)
		}
		if InSubtree(q, p) && !PathLess(p, q) {
			t.Fatalf("descendant %q sorts before its ancestor %q", q, p)
		}
	})
}

func referenceValid(p string) bool {
	if p == "/" {
		return true
	}
	if len(p) == 0 || len(p) > MaxPathBytes || p[0] != '/' || strings.ContainsRune(p, 0) {
		return false
	}
	for _, seg := range strings.Split(p[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}
