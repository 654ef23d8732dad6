package safeextract

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// This file builds archives for the tests and checks that nothing outside a target
// directory changed.

var testTime = time.Unix(1_700_000_000, 0)

// tarEntry is one tar member: a header and its body. Size defaults to len(body) for
// regular files.
type tarEntry struct {
	hdr  tar.Header
	body string
}

func tfile(name, body string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, ModTime: testTime}, body: body}
}

func tdir(name string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: testTime}}
}

func tsymlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: testTime}}
}

func thardlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644, ModTime: testTime}}
}

// buildTar writes a tar stream, gzip-compressed when gz is set. Entries whose declared
// size is larger than their body produce a truncated archive, on purpose.
func buildTar(t testing.TB, gz bool, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	var zw *gzip.Writer
	var tw *tar.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		tw = tar.NewWriter(zw)
	} else {
		tw = tar.NewWriter(&buf)
	}
	truncated := false
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if e.body != "" {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatalf("tar body %q: %v", h.Name, err)
			}
		}
		if h.Typeflag == tar.TypeReg && h.Size > int64(len(e.body)) {
			truncated = true
			break
		}
	}
	if truncated {
		// Flush what was written, without the end-of-archive blocks tw.Close would refuse
		// to write.
		_ = tw.Flush()
	} else if err := tw.Close(); err != nil {
		t.Fatalf("close tar: %v", err)
	}
	if gz {
		if err := zw.Close(); err != nil {
			t.Fatalf("close gzip: %v", err)
		}
	}
	return buf.Bytes()
}

// zipEntry is one zip member. raw, when set, writes the header as given with body as
// already-compressed data, so the declared sizes can lie.
type zipEntry struct {
	name   string
	mode   fs.FileMode
	body   string
	method uint16
	raw    *zip.FileHeader
}

func zfile(name, body string, mode fs.FileMode) zipEntry {
	return zipEntry{name: name, body: body, mode: mode, method: zip.Deflate}
}

func buildZip(t testing.TB, entries ...zipEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		if e.raw != nil {
			w, err := zw.CreateRaw(e.raw)
			if err != nil {
				t.Fatalf("zip raw %q: %v", e.raw.Name, err)
			}
			if _, err := w.Write([]byte(e.body)); err != nil {
				t.Fatalf("zip raw body %q: %v", e.raw.Name, err)
			}
			continue
		}
		h := &zip.FileHeader{Name: e.name, Method: e.method, Modified: testTime}
		if e.mode != 0 {
			h.SetMode(e.mode)
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatalf("zip header %q: %v", e.name, err)
		}
		if _, err := w.Write([]byte(e.body)); err != nil {
			t.Fatalf("zip body %q: %v", e.name, err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatalf("close zip: %v", err)
	}
	return buf.Bytes()
}

// deflate compresses b with raw DEFLATE, as a zip member's data.
func deflate(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	fw, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// lyingZip is a zip whose only member declares 10 bytes but inflates to n zero bytes.
func lyingZip(t testing.TB, n int) []byte {
	zeros := make([]byte, n)
	comp := deflate(t, zeros)
	h := &zip.FileHeader{
		Name:               "small.txt",
		Method:             zip.Deflate,
		CRC32:              crc32.ChecksumIEEE(zeros[:10]),
		CompressedSize64:   uint64(len(comp)),
		UncompressedSize64: 10,
		Modified:           testTime,
	}
	h.SetMode(0o644)
	return buildZip(t, zipEntry{raw: h, body: string(comp)})
}

// sandbox is a directory holding an archive, a sentinel directory with a precious file,
// and the (not yet existing) target directory beside them.
type sandbox struct {
	base, target, archive string
	before                map[string]string
	listing               []string
}

const keepContent = "precious, must never change\n"

var keepTime = time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)

// newSandbox makes the sentinel directory; put then adds the archive.
func newSandbox(t testing.TB) *sandbox {
	t.Helper()
	base := t.TempDir()
	s := &sandbox{base: base, target: filepath.Join(base, "target")}
	must(t, os.Mkdir(filepath.Join(base, "sentinel"), 0o755))
	must(t, os.Mkdir(filepath.Join(base, "sentinel", "sub"), 0o755))
	keep := s.keep()
	must(t, os.WriteFile(keep, []byte(keepContent), 0o644))
	must(t, os.Chtimes(keep, keepTime, keepTime))
	return s
}

// keep is the absolute path of the sentinel file.
func (s *sandbox) keep() string { return filepath.Join(s.base, "sentinel", "keep.txt") }

// put writes the archive and records the state outside the target.
func (s *sandbox) put(t testing.TB, archiveName string, data []byte) {
	t.Helper()
	s.archive = filepath.Join(s.base, archiveName)
	must(t, os.WriteFile(s.archive, data, 0o644))
	s.before = snapshot(t, s.base, s.target)
	s.listing = listing(t, s.base)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// snapshot describes every path under base except the skip subtree: type, mode, size,
// mtime and content digest or link target.
func snapshot(t testing.TB, base, skip string) map[string]string {
	t.Helper()
	m := make(map[string]string)
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		if p == base {
			return nil // Creating the target changes base's mtime; listing checks base.
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fmt.Sprintf("%v size=%d mtime=%d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			desc += " sha256=" + hex.EncodeToString(sum[:])
		case fi.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + l
		}
		m[p] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", base, err)
	}
	return m
}

// listing is the sorted names in dir other than the target.
func listing(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range des {
		if d.Name() != "target" {
			names = append(names, d.Name()+" "+d.Type().String())
		}
	}
	sort.Strings(names)
	return names
}

// checkOutside fails the test if anything beside the target changed.
func (s *sandbox) checkOutside(t testing.TB) {
	t.Helper()
	keep := s.keep()
	b, err := os.ReadFile(keep)
	if err != nil || string(b) != keepContent {
		t.Errorf("sentinel file: got %q, %v; want %q", b, err, keepContent)
	}
	if fi, err := os.Lstat(keep); err != nil || !fi.ModTime().Equal(keepTime) || !fi.Mode().IsRegular() {
		t.Errorf("sentinel file: got %v, %v; want a regular file with mtime %v", fi, err, keepTime)
	}
	if got := listing(t, s.base); strings.Join(got, ",") != strings.Join(s.listing, ",") {
		t.Errorf("listing of %s: got %v, want %v", s.base, got, s.listing)
	}
	after := snapshot(t, s.base, s.target)
	for p, want := range s.before {
		if got, ok := after[p]; !ok {
			t.Errorf("outside the target: %s disappeared (was %s)", p, want)
		} else if got != want {
			t.Errorf("outside the target: %s: got %s, want %s", p, got, want)
		}
	}
	for p, got := range after {
		if _, ok := s.before[p]; !ok {
			t.Errorf("outside the target: %s appeared: %s", p, got)
		}
	}
	// The root of the file system must not have gained an escape either.
	if _, err := os.Lstat(escapeAbs); err == nil {
		t.Errorf("%s exists: an absolute name escaped", escapeAbs)
	}
}

// escapeAbs is an absolute path that malicious archives of the fuzz seeds aim at.
const escapeAbs = "/tmp/berth-safeextract-escape"
