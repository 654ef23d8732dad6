package safeextract

import (
	"archive/tar"
	"archive/zip"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	memoMu sync.Mutex
	memos  = make(map[string][]byte)
)

// memo builds the archives that do not depend on the sandbox once per test binary.
func memo(key string, build func() []byte) []byte {
	memoMu.Lock()
	defer memoMu.Unlock()
	if b, ok := memos[key]; ok {
		return b
	}
	b := build()
	memos[key] = b
	return b
}

// badCase is a malicious or broken archive and the rule that must refuse it.
type badCase struct {
	name  string // test and fuzz seed name
	file  string // archive file name; its suffix matters only when the magic bytes don't
	data  []byte
	opts  Options
	want  error  // the sentinel the error must wrap
	entry string // when set, the entry the error must name
	// abs, when set, builds the archive instead of data, with absolute names aimed at abs,
	// a file outside the target; entry "/" then stands for abs.
	abs func(abs string) []byte
	// untouched means the refusal comes before anything is written: the target stays empty.
	untouched bool
	// big archives are left out of the fuzz seeds.
	big bool
}

// badCorpus builds the malicious archives.
func badCorpus(t testing.TB) []badCase {
	tgz := func(entries ...tarEntry) []byte { return buildTar(t, true, entries...) }
	many := func(n int) []tarEntry {
		es := make([]tarEntry, n)
		for i := range es {
			es[i] = tfile(fmt.Sprintf("f%d", i), "", 0o644)
		}
		return es
	}
	manyZip := func(n int) []zipEntry {
		es := make([]zipEntry, n)
		for i := range es {
			es[i] = zipEntry{name: fmt.Sprintf("f%d", i), mode: 0o644, method: zip.Store}
		}
		return es
	}
	dev := func(typ byte, name string) tarEntry {
		return tarEntry{hdr: tar.Header{Typeflag: typ, Name: name, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: testTime}}
	}
	tarBomb := memo("tar-bomb", func() []byte { return buildTar(t, true, tfile("zeros", strings.Repeat("\x00", 8<<20), 0o644)) })
	zipBomb := memo("zip-bomb", func() []byte { return buildZip(t, zfile("zeros", strings.Repeat("\x00", 8<<20), 0o644)) })
	zip100k := memo("zip-100001", func() []byte { return buildZip(t, manyZip(DefaultMaxEntries+1)...) })
	tgz100k := memo("tgz-100001", func() []byte { return buildTar(t, true, repeatDir(DefaultMaxEntries+1)...) })
	hugeZip := &zip.FileHeader{Name: "huge", Method: zip.Store, UncompressedSize64: 1 << 62, CompressedSize64: 1}
	hugeZip.SetMode(0o644)

	return []badCase{
		// Names that climb out.
		{name: "tar-dotdot", data: tgz(tfile("../sentinel/keep.txt", "pwned", 0o644)), want: ErrUnsafePath, entry: "../sentinel/keep.txt", untouched: true},
		{name: "tar-dotdot-inner", data: tgz(tfile("a/b/../../../sentinel/keep.txt", "pwned", 0o644)), want: ErrUnsafePath, untouched: true},
		{name: "tar-dotdot-harmless", data: tgz(tfile("a/../b", "even when it stays inside", 0o644)), want: ErrUnsafePath, untouched: true},
		{name: "tar-dotdot-dir", data: tgz(tdir("../escape/", 0o755)), want: ErrUnsafePath, untouched: true},
		{name: "tar-absolute", abs: func(abs string) []byte { return tgz(tfile(abs, "pwned", 0o644)) }, want: ErrUnsafePath, entry: "/", untouched: true},
		{name: "tar-absolute-dir", abs: func(abs string) []byte { return tgz(tdir(filepath.Dir(abs)+"/new/", 0o755)) }, want: ErrUnsafePath, untouched: true},
		{name: "tar-backslash", data: tgz(tfile(`..\..\sentinel\keep.txt`, "pwned", 0o644)), want: ErrUnsafePath, untouched: true},
		{name: "tar-drive-letter", data: tgz(tfile(`C:sentinel/keep.txt`, "pwned", 0o644)), want: ErrUnsafePath, untouched: true},
		{name: "tar-names-target", data: tgz(tfile(".", "a file over the target", 0o644)), want: ErrUnsafePath, untouched: true},
		{name: "tar-long-component", data: tgz(tfile(strings.Repeat("a", 256), "x", 0o644)), want: ErrUnsafePath, untouched: true},

		// Links that lead out, and writing through links.
		{name: "tar-symlink-out", data: tgz(tsymlink("out", "../sentinel"), tfile("out/keep.txt", "pwned", 0o644)), want: ErrUnsafeLink, entry: "out", untouched: true},
		{name: "tar-symlink-abs", abs: func(abs string) []byte {
			return tgz(tsymlink("out", filepath.Dir(abs)), tfile("out/keep.txt", "pwned", 0o644))
		}, want: ErrUnsafeLink, entry: "out", untouched: true},
		{name: "tar-symlink-deep-out", data: tgz(tdir("a/", 0o755), tsymlink("a/up", "../../sentinel/keep.txt")), want: ErrUnsafeLink, entry: "a/up"},
		{name: "tar-symlink-dotdot-after-name", data: tgz(tsymlink("x", "a/../../sentinel")), want: ErrUnsafeLink, entry: "x", untouched: true},
		// Each link alone stays inside, but a -> x/y/../.. with x -> d and d/y -> . climbs
		// two levels from the target: refused on a's ".." after a name.
		{name: "tar-symlink-chain", data: tgz(tdir("d/", 0o755), tsymlink("d/y", "."), tsymlink("x", "d"), tsymlink("a", "x/y/../.."), tfile("a/sentinel/keep.txt", "pwned", 0o644)), want: ErrUnsafeLink, entry: "a"},
		{name: "tar-write-through-symlink", data: tgz(tdir("real/", 0o755), tsymlink("link", "real"), tfile("link/f", "through a link", 0o644)), want: ErrUnsafeLink, entry: "link/f"},
		{name: "tar-write-through-dot-symlink", data: tgz(tsymlink("l", "."), tfile("l/l/f", "through a link", 0o644)), want: ErrUnsafeLink, entry: "l/l/f"},
		{name: "tar-overwrite-symlink", data: tgz(tfile("real", "a", 0o644), tsymlink("f", "real"), tfile("f", "pwned", 0o644)), want: ErrDuplicate, entry: "f"},
		{name: "tar-hardlink-out", data: tgz(thardlink("h", "../sentinel/keep.txt")), want: ErrUnsafeLink, entry: "h", untouched: true},
		{name: "tar-hardlink-abs", abs: func(abs string) []byte { return tgz(thardlink("h", abs)) }, want: ErrUnsafeLink, entry: "h", untouched: true},
		// A hard link to a symlink moves the link to another depth, where its ".." climb out.
		{name: "tar-hardlink-to-symlink", data: tgz(tdir("a/b/", 0o755), tsymlink("a/b/s", "../../sentinel"), thardlink("h", "a/b/s")), want: ErrUnsafeLink, entry: "h"},
		{name: "tar-hardlink-to-dir", data: tgz(tdir("d/", 0o755), thardlink("h", "d")), want: ErrUnsafeLink, entry: "h"},
		{name: "tar-hardlink-missing", data: tgz(thardlink("h", "not/extracted")), want: ErrUnsafeLink, entry: "h", untouched: true},
		{name: "tar-parent-is-file", data: tgz(tfile("a", "1", 0o644), tfile("a/b", "2", 0o644)), want: ErrUnsafePath, entry: "a/b"},

		// Entry types.
		{name: "tar-chardev", data: tgz(dev(tar.TypeChar, "dev/null")), want: ErrUnsupportedType, entry: "dev/null", untouched: true},
		{name: "tar-blockdev", data: tgz(dev(tar.TypeBlock, "sda")), want: ErrUnsupportedType, entry: "sda", untouched: true},
		{name: "tar-fifo", data: tgz(dev(tar.TypeFifo, "pipe")), want: ErrUnsupportedType, entry: "pipe", untouched: true},
		{name: "tar-unknown-type", data: tgz(tarEntry{hdr: tar.Header{Typeflag: 'V', Name: "volume", ModTime: testTime}}), want: ErrUnsupportedType, untouched: true},

		// Duplicates.
		{name: "tar-duplicate-file", data: tgz(tfile("a.txt", "1", 0o644), tfile("./a.txt", "2", 0o644)), want: ErrDuplicate, entry: "./a.txt"},
		{name: "tar-file-then-dir", data: tgz(tfile("a", "1", 0o644), tdir("a/", 0o755)), want: ErrDuplicate, entry: "a/"},
		{name: "tar-dir-then-file", data: tgz(tdir("a/", 0o755), tfile("a", "1", 0o644)), want: ErrDuplicate, entry: "a"},

		// Limits.
		{name: "tar-bomb-ratio", data: tarBomb, want: ErrLimit, entry: "zeros", untouched: true},
		{name: "tar-huge-declared", data: tgz(tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "huge", Size: 1 << 40, Mode: 0o644}}), want: ErrLimit, entry: "huge", untouched: true},
		{name: "tar-huge-declared-plain", file: "x.tar", data: buildTar(t, false, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "huge", Size: 1 << 30, Mode: 0o644}}), want: ErrLimit, entry: "huge", untouched: true},
		{name: "tar-many-entries", data: memo("tgz-1001", func() []byte { return tgz(many(1001)...) }), opts: Options{MaxEntries: 1000}, want: ErrLimit, entry: "f1000"},
		{name: "tar-total-bytes", data: tgz(tfile("a", strings.Repeat("a", 60), 0o644), tfile("b", strings.Repeat("b", 60), 0o644)), opts: Options{MaxBytes: 100}, want: ErrLimit, entry: "b"},
		{name: "tar-file-bytes", data: tgz(tfile("a", strings.Repeat("a", 11), 0o644)), opts: Options{MaxFileBytes: 10}, want: ErrLimit, entry: "a", untouched: true},

		// Broken archives.
		{name: "tar-truncated", data: tgz(tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "short", Size: 1000, Mode: 0o644}, body: "only this"}), want: ErrFormat},
		{name: "garbage", file: "x.bin", data: []byte("this is not an archive at all"), want: ErrFormat, untouched: true},
		{name: "gzip-garbage", data: gzipBytes(t, []byte(strings.Repeat("not a tar header ", 64))), want: ErrFormat, untouched: true},

		// Zip.
		{name: "zip-slip", file: "x.zip", data: buildZip(t, zfile("../sentinel/keep.txt", "pwned", 0o644)), want: ErrUnsafePath, entry: "../sentinel/keep.txt", untouched: true},
		{name: "zip-slip-deep", file: "x.zip", data: buildZip(t, zfile("ok.txt", "ok", 0o644), zfile("a/../../sentinel/keep.txt", "pwned", 0o644)), want: ErrUnsafePath},
		{name: "zip-slip-backslash", file: "x.zip", data: buildZip(t, zfile(`..\sentinel\keep.txt`, "pwned", 0o644)), want: ErrUnsafePath, untouched: true},
		{name: "zip-absolute", file: "x.zip", abs: func(abs string) []byte { return buildZip(t, zfile(abs, "pwned", 0o644)) }, want: ErrUnsafePath, untouched: true},
		{name: "zip-nul-name", file: "x.zip", data: buildZip(t, zfile("a\x00/../../b", "x", 0o644)), want: ErrUnsafePath, untouched: true},
		{name: "zip-symlink-out", file: "x.zip", data: buildZip(t, zipEntry{name: "out", mode: fs.ModeSymlink | 0o777, body: "../sentinel", method: zip.Store}, zfile("out/keep.txt", "pwned", 0o644)), want: ErrUnsafeLink, entry: "out", untouched: true},
		{name: "zip-socket", file: "x.zip", data: buildZip(t, zipEntry{name: "sock", mode: fs.ModeSocket | 0o644}), want: ErrUnsupportedType, entry: "sock", untouched: true},
		{name: "zip-device", file: "x.zip", data: buildZip(t, zipEntry{name: "null", mode: fs.ModeDevice | fs.ModeCharDevice | 0o666}), want: ErrUnsupportedType, entry: "null", untouched: true},
		{name: "zip-fifo", file: "x.zip", data: buildZip(t, zipEntry{name: "pipe", mode: fs.ModeNamedPipe | 0o644}), want: ErrUnsupportedType, entry: "pipe", untouched: true},
		{name: "zip-duplicate", file: "x.zip", data: buildZip(t, zfile("a.txt", "1", 0o644), zfile("a.txt", "2", 0o644)), want: ErrDuplicate, entry: "a.txt"},
		{name: "zip-bomb-ratio", file: "x.zip", data: zipBomb, want: ErrLimit, entry: "zeros", untouched: true},
		{name: "zip-lying-size", file: "x.zip", data: lyingZip(t, 1<<20), want: ErrFormat},
		{name: "zip-huge-declared", file: "x.zip", data: buildZip(t, zipEntry{raw: hugeZip, body: "x"}), want: ErrLimit, entry: "huge", untouched: true},
		{name: "zip-many-entries", file: "x.zip", data: memo("zip-1001", func() []byte { return buildZip(t, manyZip(1001)...) }), opts: Options{MaxEntries: 1000}, want: ErrLimit, untouched: true},

		// A million tiny entries, at the default limit of 100,000: the zip is refused from its
		// central directory before anything is written, the tar.gz (whose entries are all the
		// same directory, so the test stays fast) at entry 100,001.
		{name: "zip-100001-entries", file: "x.zip", data: zip100k, want: ErrLimit, untouched: true, big: true},
		{name: "tgz-100001-entries", data: tgz100k, want: ErrLimit, entry: "d/", big: true},
	}
}

func repeatDir(n int) []tarEntry {
	es := make([]tarEntry, n)
	for i := range es {
		es[i] = tdir("d/", 0o755)
	}
	return es
}
