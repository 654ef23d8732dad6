// Package safeextract unpacks tar, gzip-compressed tar and zip archives into a directory
// without ever creating, changing or following anything outside it.
//
// Every file system operation goes through an os.Root opened on the target directory, and
// every entry is checked before it is written:
//
//   - Names are relative slash paths: absolute names, ".." components, backslashes, NUL
//     bytes and drive letters are refused (ErrUnsafePath). "." and empty components are
//     dropped, so "./bin//start" extracts as "bin/start".
//   - A symbolic link's target must be relative, may only start with ".." components, must
//     not climb above the target directory from the link's own directory, and must not
//     contain ".." after a name ("a/../.."), since a later link could change what "a" means
//     (ErrUnsafeLink). Because entries are never written through a link, this keeps every
//     link's resolution inside the target, whatever other links exist.
//   - A hard link must name a regular file extracted earlier from the same archive
//     (ErrUnsafeLink); links to directories, symbolic links or files that were already there
//     are refused.
//   - No entry is written through a link: an entry whose parent path contains a symbolic
//     link, or a file, is refused (ErrUnsafeLink, ErrUnsafePath), and files are created
//     with O_EXCL so an existing name is never opened.
//   - Devices, FIFOs, sockets and unknown entry types are refused (ErrUnsupportedType).
//   - Setuid, setgid and sticky bits are dropped; only the permission bits are kept.
//     Directories always keep owner rwx, so the caller can manage and delete the tree.
//     Owners are not restored; everything belongs to the extracting user.
//   - A name that appears twice is refused (ErrDuplicate), except a directory that appears
//     again as a directory (or after files were already extracted into it): the last
//     entry's mode applies.
//   - Limits (ErrLimit): total bytes of regular files, bytes per file, number of entries,
//     and the ratio of extracted bytes to the archive's size on disk. Declared sizes are
//     checked before anything is written, and the bytes actually read are counted too, so a
//     header that lies is caught.
//
// The target directory must not exist (it is created, its parent must exist) or be empty
// (ErrTargetNotEmpty): the link rules above rely on every link in the tree having been
// checked by this package.
//
// On error, the target directory may hold part of the archive. Extract does not delete it:
// the caller extracts into a fresh directory and removes it on failure (the agent extracts
// into a new release directory and deletes it when anything fails).
package safeextract

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// Sentinel errors. Every error Extract returns about the archive wraps one of them; an
// entry refused by a rule is an *EntryError naming it, and a read error names the entry
// being read.
var (
	// ErrUnsafePath is a name that is absolute, climbs with "..", contains a backslash or a
	// NUL byte, is too long, or whose parent is not a directory.
	ErrUnsafePath = errors.New("safeextract: unsafe path")
	// ErrUnsafeLink is a symbolic link leading outside the target, a hard link to anything
	// but a regular file extracted earlier, or an entry whose path traverses a symbolic link.
	ErrUnsafeLink = errors.New("safeextract: unsafe link")
	// ErrUnsupportedType is a device node, FIFO, socket or unknown entry type.
	ErrUnsupportedType = errors.New("safeextract: unsupported entry type")
	// ErrDuplicate is a name extracted twice (other than a repeated directory).
	ErrDuplicate = errors.New("safeextract: duplicate entry")
	// ErrLimit is an archive over one of the Options limits.
	ErrLimit = errors.New("safeextract: limit exceeded")
	// ErrFormat is an archive that cannot be read: unknown format, corrupt or truncated data.
	ErrFormat = errors.New("safeextract: malformed archive")
	// ErrTargetNotEmpty is a target directory that already holds files.
	ErrTargetNotEmpty = errors.New("safeextract: target directory not empty")
)

// Defaults for the zero values of Options.
const (
	DefaultMaxBytes   int64 = 2 << 30 // 2 GiB
	DefaultMaxEntries       = 100_000
	DefaultMaxRatio         = 200
)

// RatioGrace is the number of extracted bytes exempt from MaxRatio, so that a small archive
// of very compressible text is not refused.
const RatioGrace int64 = 1 << 20

const (
	maxNameLen      = 4095 // PATH_MAX - 1
	maxComponentLen = 255  // NAME_MAX
	maxLinkTarget   = 4095
)

// Format is an archive format.
type Format int

// Formats. FormatAuto detects the format from the magic bytes and then the file name.
const (
	FormatAuto Format = iota
	FormatTar
	FormatTarGzip
	FormatZip
)

// String returns the format's usual file suffix.
func (f Format) String() string {
	switch f {
	case FormatAuto:
		return "auto"
	case FormatTar:
		return "tar"
	case FormatTarGzip:
		return "tar.gz"
	case FormatZip:
		return "zip"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// Options bounds an extraction. Zero values mean the defaults; negative values are errors.
type Options struct {
	// MaxBytes bounds the total size of the regular files extracted (DefaultMaxBytes).
	MaxBytes int64
	// MaxFileBytes bounds the size of one regular file (MaxBytes).
	MaxFileBytes int64
	// MaxEntries bounds the number of entries of any type, including directories
	// (DefaultMaxEntries).
	MaxEntries int
	// MaxRatio bounds the extracted bytes to MaxRatio times the archive's size on disk,
	// once more than RatioGrace bytes have been extracted (DefaultMaxRatio).
	MaxRatio int
	// Format forces the archive format instead of detecting it.
	Format Format
}

func (o Options) withDefaults() (Options, error) {
	if o.MaxBytes < 0 || o.MaxFileBytes < 0 || o.MaxEntries < 0 || o.MaxRatio < 0 {
		return o, fmt.Errorf("safeextract: negative limit in options %+v", o)
	}
	if o.Format < FormatAuto || o.Format > FormatZip {
		return o, fmt.Errorf("safeextract: unknown format %d", int(o.Format))
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxFileBytes == 0 || o.MaxFileBytes > o.MaxBytes {
		o.MaxFileBytes = o.MaxBytes
	}
	if o.MaxEntries == 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxRatio == 0 {
		o.MaxRatio = DefaultMaxRatio
	}
	return o, nil
}

// Stats describes what Extract wrote. On error it counts what was written before the error.
type Stats struct {
	Format    Format
	Entries   int   // entries read from the archive, of every type
	Files     int   // regular files created
	Dirs      int   // directories created, explicit or implied by a file's path
	Symlinks  int   // symbolic links created
	Hardlinks int   // hard links created
	Bytes     int64 // bytes of regular files written
}

// EntryError is an archive entry refused by a rule. Err is one of the package's sentinels.
type EntryError struct {
	Entry  string // the entry's name as stored in the archive
	Err    error  // the rule: ErrUnsafePath, ErrUnsafeLink, ErrLimit, ...
	Reason string // what exactly was wrong
}

// Error returns `entry "name": rule: reason`.
func (e *EntryError) Error() string {
	return fmt.Sprintf("entry %q: %v: %s", e.Entry, e.Err, e.Reason)
}

// Unwrap returns the rule, so errors.Is(err, ErrUnsafePath) works.
func (e *EntryError) Unwrap() error { return e.Err }

func entryErr(name string, rule error, format string, args ...any) error {
	return &EntryError{Entry: name, Err: rule, Reason: fmt.Sprintf(format, args...)}
}

// Extract unpacks the archive at archivePath into targetDir, which must not exist or be
// empty, under the rules of the package documentation. The context is checked between
// entries and while copying. On error the target directory may hold partial output, which
// the caller deletes.
func Extract(ctx context.Context, archivePath, targetDir string, opts Options) (Stats, error) {
	st, err := extract(ctx, archivePath, targetDir, opts)
	if err != nil {
		return st, fmt.Errorf("extract %s: %w", archivePath, err)
	}
	return st, nil
}

func extract(ctx context.Context, archivePath, targetDir string, opts Options) (Stats, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Stats{}, err
	}
	f, err := os.Open(archivePath)
	if err != nil {
		return Stats{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Stats{}, err
	}
	if !fi.Mode().IsRegular() {
		return Stats{}, fmt.Errorf("%w: not a regular file (%v)", ErrFormat, fi.Mode().Type())
	}
	format := opts.Format
	if format == FormatAuto {
		if format, err = detect(f, archivePath); err != nil {
			return Stats{}, err
		}
	}
	root, err := openTarget(targetDir)
	if err != nil {
		return Stats{}, err
	}
	defer root.Close()

	x := &extractor{
		ctx:      ctx,
		root:     root,
		opts:     opts,
		maxRatio: ratioBudget(fi.Size(), opts.MaxRatio),
		kinds:    make(map[string]kind),
		dirModes: make(map[string]dirMeta),
		buf:      make([]byte, 256<<10),
	}
	x.stats.Format = format
	switch format {
	case FormatTar:
		err = x.tar(f)
	case FormatTarGzip:
		var zr *gzip.Reader
		zr, err = gzip.NewReader(f)
		if err != nil {
			err = fmt.Errorf("%w: gzip: %w", ErrFormat, err)
			break
		}
		err = x.tar(zr)
	case FormatZip:
		err = x.zip(f, fi.Size())
	}
	if err == nil {
		err = x.finish()
	}
	return x.stats, err
}

// ratioBudget is the most bytes an archive of size n may produce.
func ratioBudget(n int64, ratio int) int64 {
	if n > math.MaxInt64/int64(ratio) {
		return math.MaxInt64
	}
	return max(n*int64(ratio), RatioGrace)
}

// detect reads the magic bytes of f, and falls back to the file name.
func detect(f *os.File, name string) (Format, error) {
	var head [512]byte
	n, err := f.ReadAt(head[:], 0)
	if err != nil && err != io.EOF {
		return 0, err
	}
	b := head[:n]
	switch {
	case bytes.HasPrefix(b, []byte{0x1f, 0x8b}):
		return FormatTarGzip, nil
	case bytes.HasPrefix(b, []byte("PK\x03\x04")), bytes.HasPrefix(b, []byte("PK\x05\x06")):
		return FormatZip, nil
	case n >= 262 && string(b[257:262]) == "ustar":
		return FormatTar, nil
	}
	lower := strings.ToLower(name)
	switch {
	case strings.HasSuffix(lower, ".tar.gz"), strings.HasSuffix(lower, ".tgz"):
		return FormatTarGzip, nil
	case strings.HasSuffix(lower, ".tar"):
		return FormatTar, nil
	case strings.HasSuffix(lower, ".zip"):
		return FormatZip, nil
	}
	return 0, fmt.Errorf("%w: unrecognised format (want .tar.gz, .tgz, .tar or .zip)", ErrFormat)
}

// openTarget creates dir, or checks that it is an empty directory, and opens it as a Root.
func openTarget(dir string) (*os.Root, error) {
	created := true
	if err := os.Mkdir(dir, 0o755); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create target: %w", err)
		}
		created = false
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open target: %w", err)
	}
	if created {
		return root, nil
	}
	d, err := root.Open(".")
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("open target: %w", err)
	}
	names, err := d.Readdirnames(1)
	d.Close()
	if err != nil && err != io.EOF {
		root.Close()
		return nil, fmt.Errorf("read target: %w", err)
	}
	if len(names) > 0 {
		root.Close()
		return nil, fmt.Errorf("%w: %s holds %q", ErrTargetNotEmpty, dir, names[0])
	}
	return root, nil
}

// kind is what a cleaned name is in the extracted tree.
type kind int

const (
	kindDir kind = iota + 1
	kindFile
	kindSymlink
)

func (k kind) String() string {
	switch k {
	case kindDir:
		return "directory"
	case kindFile:
		return "file"
	case kindSymlink:
		return "symlink"
	}
	return "unknown"
}

// entryType is what an archive entry asks to create.
type entryType int

const (
	typeFile entryType = iota + 1
	typeDir
	typeSymlink
	typeHardlink
	typeSkip // metadata entries such as pax global headers
)

// entry is one archive entry in a format-neutral form.
type entry struct {
	name     string
	typ      entryType
	perm     fs.FileMode // permission bits only
	size     int64       // declared size of a regular file
	linkname string      // hard link target (tar)
	mtime    time.Time
	// body returns the content of a regular file or the target of a symbolic link.
	body func() (io.ReadCloser, error)
}

type dirMeta struct {
	perm  fs.FileMode
	mtime time.Time
}

// extractor holds the state of one extraction. It is used by one goroutine.
type extractor struct {
	ctx      context.Context
	root     *os.Root
	opts     Options
	maxRatio int64
	stats    Stats
	// kinds records every name created, cleaned; it is the authority on what the tree
	// holds, since the target started empty.
	kinds    map[string]kind
	dirModes map[string]dirMeta
	buf      []byte
}

func (x *extractor) tar(r io.Reader) error {
	tr := tar.NewReader(r)
	last := ""
	for {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil && !(errors.Is(err, tar.ErrInsecurePath) && hdr != nil) {
			// tar.ErrInsecurePath (GODEBUG tarinsecurepath=0) comes with a usable header;
			// add refuses the name itself.
			if last == "" {
				return fmt.Errorf("%w: read first tar header: %w", ErrFormat, err)
			}
			return fmt.Errorf("%w: read tar header after %q: %w", ErrFormat, last, err)
		}
		last = hdr.Name
		e := entry{
			name:     hdr.Name,
			perm:     fs.FileMode(hdr.Mode) & fs.ModePerm,
			size:     hdr.Size,
			linkname: hdr.Linkname,
			mtime:    hdr.ModTime,
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeCont, tar.TypeGNUSparse: // The reader turns TypeRegA into TypeReg or TypeDir.
			e.typ = typeFile
			e.body = func() (io.ReadCloser, error) { return io.NopCloser(tr), nil }
		case tar.TypeDir:
			e.typ = typeDir
		case tar.TypeSymlink:
			e.typ = typeSymlink
			target := hdr.Linkname
			e.body = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(target)), nil }
		case tar.TypeLink:
			e.typ = typeHardlink
		case tar.TypeXGlobalHeader:
			e.typ = typeSkip
		case tar.TypeChar:
			return x.refuseType(hdr.Name, "character device")
		case tar.TypeBlock:
			return x.refuseType(hdr.Name, "block device")
		case tar.TypeFifo:
			return x.refuseType(hdr.Name, "FIFO")
		default:
			return x.refuseType(hdr.Name, fmt.Sprintf("tar type %q", hdr.Typeflag))
		}
		if err := x.add(e); err != nil {
			return err
		}
	}
}

func (x *extractor) refuseType(name, what string) error {
	x.stats.Entries++
	return entryErr(name, ErrUnsupportedType, "%s", what)
}

func (x *extractor) zip(f *os.File, size int64) error {
	zr, err := zip.NewReader(f, size)
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return fmt.Errorf("%w: zip: %w", ErrFormat, err)
	}
	// The central directory gives every entry up front: refuse over-limit archives before
	// writing anything.
	if len(zr.File) > x.opts.MaxEntries {
		return fmt.Errorf("%w: %d entries, limit %d", ErrLimit, len(zr.File), x.opts.MaxEntries)
	}
	var declared uint64
	for _, zf := range zr.File {
		declared += min(zf.UncompressedSize64, math.MaxInt64)
		if declared > uint64(x.opts.MaxBytes) {
			return entryErr(zf.Name, ErrLimit, "declared sizes reach %d bytes, limit %d", declared, x.opts.MaxBytes)
		}
	}
	for _, zf := range zr.File {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		mode := zf.Mode()
		e := entry{
			name:  zf.Name,
			perm:  mode.Perm(),
			size:  int64(min(zf.UncompressedSize64, math.MaxInt64)),
			mtime: zf.Modified,
			body:  zf.Open,
		}
		switch {
		case strings.HasSuffix(zf.Name, "/") || mode.IsDir():
			e.typ = typeDir
		case mode&fs.ModeSymlink != 0:
			e.typ = typeSymlink
		case mode&(fs.ModeDevice|fs.ModeCharDevice) != 0:
			return x.refuseType(zf.Name, "device node")
		case mode&fs.ModeNamedPipe != 0:
			return x.refuseType(zf.Name, "FIFO")
		case mode&fs.ModeSocket != 0:
			return x.refuseType(zf.Name, "socket")
		case mode.IsRegular():
			e.typ = typeFile
		default:
			return x.refuseType(zf.Name, fmt.Sprintf("mode %v", mode))
		}
		if err := x.add(e); err != nil {
			return err
		}
	}
	return nil
}

// add checks and creates one entry.
func (x *extractor) add(e entry) error {
	x.stats.Entries++
	if x.stats.Entries > x.opts.MaxEntries {
		return entryErr(e.name, ErrLimit, "more than %d entries", x.opts.MaxEntries)
	}
	if e.typ == typeSkip {
		return nil
	}
	name, reason := cleanName(e.name)
	if reason != "" {
		return entryErr(e.name, ErrUnsafePath, "%s", reason)
	}
	if name == "." {
		if e.typ == typeDir {
			return nil // The target directory itself; its mode is the caller's.
		}
		return entryErr(e.name, ErrUnsafePath, "names the target directory itself")
	}
	if err := x.parents(e.name, name); err != nil {
		return err
	}
	if k, ok := x.kinds[name]; ok {
		if k == kindDir && e.typ == typeDir {
			x.dirModes[name] = dirMeta{perm: e.perm, mtime: e.mtime}
			return nil
		}
		return entryErr(e.name, ErrDuplicate, "%q already extracted as a %v", name, k)
	}
	switch e.typ {
	case typeDir:
		if err := x.root.Mkdir(name, 0o700); err != nil {
			return err
		}
		x.kinds[name] = kindDir
		x.dirModes[name] = dirMeta{perm: e.perm, mtime: e.mtime}
		x.stats.Dirs++
	case typeFile:
		if err := x.file(e, name); err != nil {
			return err
		}
	case typeSymlink:
		if err := x.symlink(e, name); err != nil {
			return err
		}
	case typeHardlink:
		target, reason := cleanName(e.linkname)
		if reason != "" {
			return entryErr(e.name, ErrUnsafeLink, "hard link target %q: %s", e.linkname, reason)
		}
		if x.kinds[target] != kindFile {
			return entryErr(e.name, ErrUnsafeLink, "hard link target %q is not a regular file extracted earlier", e.linkname)
		}
		if err := x.root.Link(target, name); err != nil {
			return err
		}
		x.kinds[name] = kindFile
		x.stats.Hardlinks++
	}
	return nil
}

// parents checks that every parent of name is a directory extracted earlier, creating the
// missing ones, so that nothing is ever written through a link or a file.
func (x *extractor) parents(raw, name string) error {
	for i := 0; i < len(name); i++ {
		if name[i] != '/' {
			continue
		}
		dir := name[:i]
		switch k := x.kinds[dir]; k {
		case kindDir:
			continue
		case kindSymlink:
			return entryErr(raw, ErrUnsafeLink, "path traverses symbolic link %q", dir)
		case kindFile:
			return entryErr(raw, ErrUnsafePath, "parent %q is a file", dir)
		}
		// Belt and braces: the tree started empty, so an unknown name must not exist. Mkdir
		// fails on anything already there, link or not.
		if err := x.root.Mkdir(dir, 0o700); err != nil {
			return err
		}
		x.kinds[dir] = kindDir
		x.dirModes[dir] = dirMeta{perm: 0o755}
		x.stats.Dirs++
	}
	return nil
}

func (x *extractor) file(e entry, name string) error {
	if e.size < 0 {
		return entryErr(e.name, ErrFormat, "negative size %d", e.size)
	}
	if err := x.reserve(e.name, e.size); err != nil {
		return err
	}
	r, err := e.body()
	if err != nil {
		return fmt.Errorf("%w: entry %q: %w", ErrFormat, e.name, err)
	}
	defer r.Close()
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	// Read one byte past the declared size to catch content longer than its header says.
	cr := &ctxReader{ctx: x.ctx, r: io.LimitReader(r, e.size+1)}
	n, err := io.CopyBuffer(f, cr, x.buf)
	x.stats.Bytes += min(n, e.size)
	switch {
	case cr.err != nil:
		// The archive could not be read (corrupt or truncated), as opposed to a write error.
		err = fmt.Errorf("%w: entry %q: %w", ErrFormat, e.name, cr.err)
	case err != nil:
	case n > e.size:
		err = entryErr(e.name, ErrLimit, "content longer than its declared size %d", e.size)
	case n < e.size:
		err = entryErr(e.name, ErrFormat, "content of %d bytes shorter than its declared size %d", n, e.size)
	}
	if err != nil {
		f.Close()
		return err
	}
	// Chmod on the open file: exact permission bits, without the umask and without a
	// path lookup.
	if err := f.Chmod(e.perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	x.kinds[name] = kindFile
	x.stats.Files++
	if !e.mtime.IsZero() {
		return x.root.Chtimes(name, e.mtime, e.mtime)
	}
	return nil
}

// reserve checks that size more bytes fit the byte, file and ratio limits.
func (x *extractor) reserve(raw string, size int64) error {
	if size > x.opts.MaxFileBytes {
		return entryErr(raw, ErrLimit, "size %d over the per-file limit %d", size, x.opts.MaxFileBytes)
	}
	total := x.stats.Bytes + size
	if total > x.opts.MaxBytes {
		return entryErr(raw, ErrLimit, "total size %d over the limit %d", total, x.opts.MaxBytes)
	}
	if total > x.maxRatio {
		return entryErr(raw, ErrLimit, "total size %d over %d times the archive size (%d bytes)", total, x.opts.MaxRatio, x.maxRatio)
	}
	return nil
}

func (x *extractor) symlink(e entry, name string) error {
	r, err := e.body()
	if err != nil {
		return fmt.Errorf("%w: entry %q: %w", ErrFormat, e.name, err)
	}
	b, err := io.ReadAll(io.LimitReader(r, maxLinkTarget+1))
	r.Close()
	if err != nil {
		return fmt.Errorf("%w: entry %q: %w", ErrFormat, e.name, err)
	}
	target := string(b)
	if reason := checkLinkTarget(name, target); reason != "" {
		return entryErr(e.name, ErrUnsafeLink, "%s", reason)
	}
	if err := x.root.Symlink(target, name); err != nil {
		return err
	}
	x.kinds[name] = kindSymlink
	x.stats.Symlinks++
	return nil
}

// finish applies the modes and times of directories, deepest first, once nothing more is
// written into them.
func (x *extractor) finish() error {
	dirs := make([]string, 0, len(x.dirModes))
	for d := range x.dirModes {
		dirs = append(dirs, d)
	}
	sort.Slice(dirs, func(i, j int) bool {
		di, dj := strings.Count(dirs[i], "/"), strings.Count(dirs[j], "/")
		if di != dj {
			return di > dj
		}
		return dirs[i] < dirs[j]
	})
	for _, d := range dirs {
		m := x.dirModes[d]
		if err := x.root.Chmod(d, m.perm|0o700); err != nil {
			return err
		}
		if !m.mtime.IsZero() {
			if err := x.root.Chtimes(d, m.mtime, m.mtime); err != nil {
				return err
			}
		}
	}
	return nil
}

// cleanName returns name as a clean relative slash path, or a reason to refuse it.
func cleanName(name string) (clean, reason string) {
	switch {
	case name == "":
		return "", "empty name"
	case strings.IndexByte(name, 0) >= 0:
		return "", "NUL byte in name"
	case strings.IndexByte(name, '\\') >= 0:
		return "", "backslash in name"
	case name[0] == '/':
		return "", "absolute name"
	case len(name) >= 2 && name[1] == ':' && isLetter(name[0]):
		return "", "drive letter in name"
	case len(name) > maxNameLen:
		return "", fmt.Sprintf("name longer than %d bytes", maxNameLen)
	}
	parts := strings.Split(name, "/")
	kept := parts[:0]
	for _, p := range parts {
		switch {
		case p == "" || p == ".":
			continue
		case p == "..":
			return "", `parent directory reference ".."`
		case len(p) > maxComponentLen:
			return "", fmt.Sprintf("name component longer than %d bytes", maxComponentLen)
		}
		kept = append(kept, p)
	}
	if len(kept) == 0 {
		return ".", ""
	}
	return strings.Join(kept, "/"), ""
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// checkLinkTarget returns why a symbolic link at the clean name with this target could lead
// outside the target directory, or "".
func checkLinkTarget(name, target string) string {
	switch {
	case target == "":
		return "empty symlink target"
	case strings.IndexByte(target, 0) >= 0:
		return "NUL byte in symlink target"
	case strings.IndexByte(target, '\\') >= 0:
		return fmt.Sprintf("backslash in symlink target %q", target)
	case target[0] == '/':
		return fmt.Sprintf("absolute symlink target %q", target)
	case len(target) > maxLinkTarget:
		return fmt.Sprintf("symlink target longer than %d bytes", maxLinkTarget)
	}
	depth := 0
	if dir := path.Dir(name); dir != "." {
		depth = strings.Count(dir, "/") + 1
	}
	up, named := 0, false
	for _, p := range strings.Split(target, "/") {
		switch p {
		case "", ".":
		case "..":
			if named {
				return fmt.Sprintf(`symlink target %q has ".." after a name`, target)
			}
			up++
		default:
			named = true
		}
	}
	if up > depth {
		return fmt.Sprintf("symlink target %q leads outside the target directory", target)
	}
	return ""
}

// ctxReader stops a copy when its context ends, and keeps the archive's read error apart
// from errors writing the copy.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
	err error // the first read error other than io.EOF
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}
