package safeextract

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var updateSeeds = flag.Bool("update", false, "rewrite testdata/fuzz/FuzzExtract from the test corpus")

func gzipBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ruleErrors are the sentinels every refusal wraps.
var ruleErrors = []error{ErrUnsafePath, ErrUnsafeLink, ErrUnsupportedType, ErrDuplicate, ErrLimit, ErrFormat}

func isRuleError(err error) bool {
	for _, r := range ruleErrors {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

func TestExtractRefusesMaliciousArchives(t *testing.T) {
	for _, c := range badCorpus(t) {
		t.Run(c.name, func(t *testing.T) {
			s := newSandbox(t)
			if c.abs != nil {
				// Absolute names aim at this sandbox's sentinel file.
				c.data = c.abs(s.keep())
				if c.entry == "/" {
					c.entry = s.keep()
				}
			}
			file := c.file
			if file == "" {
				file = "pkg.tar.gz"
			}
			s.put(t, file, c.data)
			start := time.Now()
			st, err := Extract(t.Context(), s.archive, s.target, c.opts)
			elapsed := time.Since(start)
			if !errors.Is(err, c.want) {
				t.Fatalf("Extract: got error %v, want %v", err, c.want)
			}
			for _, other := range ruleErrors {
				if other != c.want && errors.Is(err, other) {
					t.Errorf("Extract: error %v also matches %v", err, other)
				}
			}
			if c.entry != "" {
				var ee *EntryError
				if !errors.As(err, &ee) {
					t.Fatalf("Extract: got %T %v, want an *EntryError naming %q", err, err, c.entry)
				}
				if ee.Entry != c.entry {
					t.Errorf("EntryError.Entry: got %q, want %q", ee.Entry, c.entry)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("entry %q", c.entry)) || !strings.Contains(err.Error(), c.want.Error()) {
					t.Errorf("error text %q: want the entry %q and the rule %q", err, c.entry, c.want)
				}
			}
			if !strings.HasPrefix(err.Error(), "extract "+s.archive+": ") {
				t.Errorf("error text %q: want it to start with the archive path", err)
			}
			s.checkOutside(t)
			if c.untouched {
				if names := treeNames(t, s.target); len(names) != 0 {
					t.Errorf("target: got %v, want nothing written (stats %+v)", names, st)
				}
			}
			checkTree(t, s.target)
			if c.big {
				t.Logf("%s: %d bytes, refused after %d entries in %v", c.name, len(c.data), st.Entries, elapsed)
			}
		})
	}
}

// treeNames lists the paths under dir, or nothing when dir does not exist.
func treeNames(t testing.TB, dir string) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return filepath.SkipAll
			}
			return err
		}
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			names = append(names, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// checkTree checks what an extraction left in root, whatever the archive was: only
// directories, regular files and symbolic links; no setuid, setgid or sticky bit; and every
// symbolic link resolves inside root, following links as the kernel does.
func checkTree(t testing.TB, root string) {
	t.Helper()
	for _, rel := range treeNames(t, root) {
		fi, err := os.Lstat(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		m := fi.Mode()
		if m&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			t.Errorf("%s: mode %v has special bits", rel, m)
		}
		switch {
		case m.IsDir(), m.IsRegular():
		case m&fs.ModeSymlink != 0:
			if err := resolvesInside(root, rel); err != nil {
				t.Errorf("%s: %v", rel, err)
			}
		default:
			t.Errorf("%s: mode %v is not a directory, file or symlink", rel, m)
		}
	}
}

// resolvesInside follows rel from root component by component, as path resolution does,
// and returns an error if it climbs above root or reaches an absolute link.
func resolvesInside(root, rel string) error {
	todo := strings.Split(filepath.ToSlash(rel), "/")
	var cur []string
	for links := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return fmt.Errorf("resolves above the root")
			}
			cur = cur[:len(cur)-1]
			continue
		}
		p := filepath.Join(append([]string{root}, append(cur, c)...)...)
		fi, err := os.Lstat(p)
		if err != nil {
			return nil // Dangling: resolution stops here, inside.
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = append(cur, c)
			continue
		}
		if links++; links > 40 {
			return nil // ELOOP.
		}
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		if filepath.IsAbs(target) {
			return fmt.Errorf("link %s is absolute: %s", p, target)
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return nil
}

// goodTar is a package exercising every supported entry type.
func goodTar() []tarEntry {
	return []tarEntry{
		{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "berth"}}},
		tdir("./", 0o755),
		tdir("app/", 0o750),
		tfile("app/berth.yaml", "service: hotel/search\n", 0o644),
		tfile("./app/bin/start.sh", "#!/bin/sh\nexec ./search\n", 0o755),
		tfile("app/conf/app.yaml", "port: 8080\n", 0o640),
		tfile("app/secret", "s3cr3t", 0o600),
		tfile("app/suid", "setuid bit must be dropped", 0o4755),
		tdir("app/shared/", 0o3777),
		tdir("app/ro/", 0o555),
		tfile("app/ro/file", "read-only", 0o444),
		tsymlink("app/current", "bin/start.sh"),
		tsymlink("app/conf/up", "../bin"),
		thardlink("app/bin/start-again.sh", "app/bin/start.sh"),
		tdir("app/", 0o750),
		tfile("app/empty", "", 0o644),
	}
}

func goodZip() []zipEntry {
	return []zipEntry{
		{name: "app/", mode: fs.ModeDir | 0o750},
		zfile("app/berth.yaml", "service: hotel/search\n", 0o644),
		zfile("./app/bin/start.sh", "#!/bin/sh\nexec ./search\n", 0o755),
		zfile("app/conf/app.yaml", "port: 8080\n", 0o640),
		zfile("app/secret", "s3cr3t", 0o600),
		zfile("app/suid", "setuid bit must be dropped", fs.ModeSetuid|0o755),
		{name: "app/shared/", mode: fs.ModeDir | fs.ModeSetgid | fs.ModeSticky | 0o777},
		{name: "app/ro/", mode: fs.ModeDir | 0o555},
		zfile("app/ro/file", "read-only", 0o444),
		{name: "app/current", mode: fs.ModeSymlink | 0o777, body: "bin/start.sh", method: zip.Store},
		{name: "app/conf/up", mode: fs.ModeSymlink | 0o777, body: "../bin", method: zip.Store},
		zfile("app/empty", "", 0o644),
	}
}

func TestExtractGoodArchives(t *testing.T) {
	type node struct {
		perm fs.FileMode
		body string // file content or link target
		typ  fs.FileMode
	}
	want := map[string]node{
		"app":               {perm: 0o750, typ: fs.ModeDir},
		"app/berth.yaml":    {perm: 0o644, body: "service: hotel/search\n"},
		"app/bin":           {perm: 0o755, typ: fs.ModeDir},
		"app/bin/start.sh":  {perm: 0o755, body: "#!/bin/sh\nexec ./search\n"},
		"app/conf":          {perm: 0o755, typ: fs.ModeDir},
		"app/conf/app.yaml": {perm: 0o640, body: "port: 8080\n"},
		"app/conf/up":       {typ: fs.ModeSymlink, body: "../bin"},
		"app/current":       {typ: fs.ModeSymlink, body: "bin/start.sh"},
		"app/empty":         {perm: 0o644},
		"app/ro":            {perm: 0o755, typ: fs.ModeDir}, // owner rwx is always kept
		"app/ro/file":       {perm: 0o444, body: "read-only"},
		"app/secret":        {perm: 0o600, body: "s3cr3t"},
		"app/shared":        {perm: 0o777, typ: fs.ModeDir},
		"app/suid":          {perm: 0o755, body: "setuid bit must be dropped"},
	}
	withHardlink := map[string]node{"app/bin/start-again.sh": {perm: 0o755, body: "#!/bin/sh\nexec ./search\n"}}
	for k, v := range want {
		withHardlink[k] = v
	}
	cases := []struct {
		name, file string
		data       []byte
		want       map[string]node
		stats      Stats
	}{
		{"tar.gz", "pkg.tar.gz", buildTar(t, true, goodTar()...), withHardlink, Stats{Format: FormatTarGzip, Entries: 16, Files: 7, Dirs: 5, Symlinks: 2, Hardlinks: 1, Bytes: 98}},
		{"tgz by magic", "pkg.bin", buildTar(t, true, goodTar()...), withHardlink, Stats{Format: FormatTarGzip, Entries: 16, Files: 7, Dirs: 5, Symlinks: 2, Hardlinks: 1, Bytes: 98}},
		{"tar", "pkg.tar", buildTar(t, false, goodTar()...), withHardlink, Stats{Format: FormatTar, Entries: 16, Files: 7, Dirs: 5, Symlinks: 2, Hardlinks: 1, Bytes: 98}},
		{"zip", "pkg.zip", buildZip(t, goodZip()...), want, Stats{Format: FormatZip, Entries: 12, Files: 7, Dirs: 5, Symlinks: 2, Bytes: 98}},
		{"zip named tgz", "pkg.tgz", buildZip(t, goodZip()...), want, Stats{Format: FormatZip, Entries: 12, Files: 7, Dirs: 5, Symlinks: 2, Bytes: 98}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSandbox(t)
			s.put(t, c.file, c.data)
			st, err := Extract(t.Context(), s.archive, s.target, Options{})
			if err != nil {
				t.Fatalf("Extract: %v", err)
			}
			if st != c.stats {
				t.Errorf("stats: got %+v, want %+v", st, c.stats)
			}
			s.checkOutside(t)
			checkTree(t, s.target)
			got := treeNames(t, s.target)
			if len(got) != len(c.want) {
				t.Errorf("tree: got %v, want %d entries", got, len(c.want))
			}
			for name, w := range c.want {
				p := filepath.Join(s.target, name)
				fi, err := os.Lstat(p)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				if fi.Mode().Type() != w.typ {
					t.Errorf("%s: got type %v, want %v", name, fi.Mode().Type(), w.typ)
				}
				switch w.typ {
				case fs.ModeSymlink:
					if l, _ := os.Readlink(p); l != w.body {
						t.Errorf("%s: got link to %q, want %q", name, l, w.body)
					}
					continue
				case 0:
					if b, _ := os.ReadFile(p); string(b) != w.body {
						t.Errorf("%s: got content %q, want %q", name, b, w.body)
					}
				}
				if fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != w.perm {
					t.Errorf("%s: got mode %v, want %v", name, fi.Mode(), w.perm)
				}
				if name != "app/bin" && name != "app/conf" && !fi.ModTime().Equal(testTime) {
					t.Errorf("%s: got mtime %v, want %v", name, fi.ModTime(), testTime)
				}
			}
			if _, ok := c.want["app/bin/start-again.sh"]; ok {
				a, _ := os.Stat(filepath.Join(s.target, "app/bin/start.sh"))
				b, _ := os.Stat(filepath.Join(s.target, "app/bin/start-again.sh"))
				if a == nil || b == nil || !os.SameFile(a, b) {
					t.Errorf("app/bin/start-again.sh: want a hard link to app/bin/start.sh")
				}
			}
		})
	}
}

// TestExtractManyFiles extracts a realistic large package under the default limits.
func TestExtractManyFiles(t *testing.T) {
	const dirs, perDir = 50, 100
	var es []tarEntry
	for d := 0; d < dirs; d++ {
		for f := 0; f < perDir; f++ {
			es = append(es, tfile(fmt.Sprintf("lib/d%03d/f%03d.js", d, f), fmt.Sprintf("module %d/%d\n", d, f), 0o644))
		}
	}
	s := newSandbox(t)
	s.put(t, "big.tgz", buildTar(t, true, es...))
	start := time.Now()
	st, err := Extract(t.Context(), s.archive, s.target, Options{})
	if err != nil {
		t.Fatalf("Extract: %v", err)
	}
	t.Logf("%d files in %v", st.Files, time.Since(start))
	if st.Files != dirs*perDir || st.Dirs != dirs+1 {
		t.Errorf("stats: got %+v, want %d files, %d dirs", st, dirs*perDir, dirs+1)
	}
	b, err := os.ReadFile(filepath.Join(s.target, "lib/d049/f099.js"))
	if err != nil || string(b) != "module 49/99\n" {
		t.Errorf("lib/d049/f099.js: got %q, %v", b, err)
	}
	s.checkOutside(t)
}

func TestExtractTarget(t *testing.T) {
	data := buildTar(t, true, tfile("a", "a", 0o644))
	t.Run("existing empty directory", func(t *testing.T) {
		s := newSandbox(t)
		s.put(t, "pkg.tgz", data)
		must(t, os.Mkdir(s.target, 0o700))
		if _, err := Extract(t.Context(), s.archive, s.target, Options{}); err != nil {
			t.Fatalf("Extract: %v", err)
		}
		if fi, err := os.Stat(s.target); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("target: got %v, %v; want its mode 0700 untouched", fi, err)
		}
	})
	t.Run("not empty", func(t *testing.T) {
		s := newSandbox(t)
		s.put(t, "pkg.tgz", data)
		must(t, os.Mkdir(s.target, 0o755))
		must(t, os.Symlink("../sentinel", filepath.Join(s.target, "a")))
		_, err := Extract(t.Context(), s.archive, s.target, Options{})
		if !errors.Is(err, ErrTargetNotEmpty) {
			t.Fatalf("Extract: got %v, want %v", err, ErrTargetNotEmpty)
		}
		s.checkOutside(t)
	})
	t.Run("missing parent", func(t *testing.T) {
		s := newSandbox(t)
		s.put(t, "pkg.tgz", data)
		_, err := Extract(t.Context(), s.archive, filepath.Join(s.target, "a", "b"), Options{})
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Extract: got %v, want %v", err, fs.ErrNotExist)
		}
	})
	t.Run("archive missing", func(t *testing.T) {
		s := newSandbox(t)
		_, err := Extract(t.Context(), filepath.Join(s.base, "nope.tgz"), s.target, Options{})
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Extract: got %v, want %v", err, fs.ErrNotExist)
		}
		if _, err := os.Stat(s.target); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("target: got %v, want it not created", err)
		}
	})
	t.Run("negative limit", func(t *testing.T) {
		s := newSandbox(t)
		s.put(t, "pkg.tgz", data)
		if _, err := Extract(t.Context(), s.archive, s.target, Options{MaxEntries: -1}); err == nil {
			t.Fatal("Extract: got nil error, want one for MaxEntries -1")
		}
	})
}

func TestExtractCancelled(t *testing.T) {
	s := newSandbox(t)
	s.put(t, "pkg.tgz", buildTar(t, true, tfile("a", "a", 0o644)))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := Extract(ctx, s.archive, s.target, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Extract: got %v, want %v", err, context.Canceled)
	}
}

func TestCheckLinkTarget(t *testing.T) {
	cases := []struct {
		name, target string
		ok           bool
	}{
		{"a", "b", true},
		{"a", ".", true},
		{"a", "./b/", true},
		{"a", "..", false},
		{"a/b", "..", true},
		{"a/b", "../..", false},
		{"a/b/c", "../../x/y", true},
		{"a/b/c", "../../../x", false},
		{"a/b/c", "x/../../..", false},
		{"a/b/c", "x/../y", false},
		{"a", "/etc/passwd", false},
		{"a", "", false},
		{"a", `..\..`, false},
	}
	for _, c := range cases {
		reason := checkLinkTarget(c.name, c.target)
		if (reason == "") != c.ok {
			t.Errorf("checkLinkTarget(%q, %q): got %q, want ok=%v", c.name, c.target, reason, c.ok)
		}
	}
}

// TestFuzzSeeds checks that testdata/fuzz/FuzzExtract holds the corpus; go test -run
// TestFuzzSeeds -update rewrites it.
func TestFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzExtract")
	seeds := fuzzSeeds(t)
	if *updateSeeds {
		must(t, os.RemoveAll(dir))
		must(t, os.MkdirAll(dir, 0o755))
		for name, data := range seeds {
			must(t, os.WriteFile(filepath.Join(dir, name), seedFile(data), 0o644))
		}
	}
	for name, data := range seeds {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(b, seedFile(data)) {
			t.Errorf("seed %s: missing or stale (%v); run go test -run TestFuzzSeeds -update", name, err)
		}
	}
}

// fuzzSeeds is the corpus, small archives only, with absolute names aimed at escapeAbs.
func fuzzSeeds(t testing.TB) map[string][]byte {
	seeds := map[string][]byte{
		"good-tgz": buildTar(t, true, goodTar()...),
		"good-tar": buildTar(t, false, goodTar()...),
		"good-zip": buildZip(t, goodZip()...),
	}
	for _, c := range badCorpus(t) {
		if c.abs != nil {
			c.data = c.abs(escapeAbs + "/x")
		}
		if !c.big && len(c.data) <= 64<<10 {
			seeds[c.name] = c.data
		}
	}
	return seeds
}

func seedFile(data []byte) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", data)
}

func FuzzExtract(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newSandbox(t)
		s.put(t, "archive", data)
		_, err := Extract(t.Context(), s.archive, s.target, Options{MaxBytes: 1 << 20, MaxEntries: 100})
		if err != nil && !isRuleError(err) {
			t.Errorf("Extract: got %v, want nil or a rule error", err)
		}
		s.checkOutside(t)
		checkTree(t, s.target)
	})
}
