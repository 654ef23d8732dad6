// Package buildctx writes the build contexts the image builder sends to the Docker engine:
// tar streams made in Go, so that nothing is ever auto-extracted by the engine (no ADD of
// an archive) and the package's files reach the image exactly as pkg/safeextract unpacked
// them.
//
// An application context is
//
//	Dockerfile   FROM <base>, COPY app/ /app/, LABELs
//	app/...      the unpacked package
//
// and a base-image context is a FROM scratch Dockerfile with a root file system holding a
// static busybox and its applet links, so that /bin/sh and the usual tools exist.
package buildctx

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Label keys the builder sets on every image it builds.
const (
	LabelService       = "dev.berth.service"
	LabelVersion       = "dev.berth.version"
	LabelPackageSHA256 = "dev.berth.package-sha256"
	LabelBase          = "dev.berth.base"
)

// epoch is the modification time of the files the package does not provide (the
// Dockerfile, base-image files), fixed so that equal inputs make equal contexts.
var epoch = time.Unix(0, 0).UTC()

// Dockerfile is the Dockerfile of an application image: the base, the package under /app
// and the labels, in key order. It has no other instruction on purpose: the classic
// builder commits a container for every metadata instruction (about a second each on a
// slow storage driver), and the container-deploy plugin sets the working directory and
// the command when it creates the container.
func Dockerfile(base string, labels map[string]string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "FROM %s\n", base)
	b.WriteString("COPY app/ /app/\n")
	writeLabels(&b, labels)
	return []byte(b.String())
}

func writeLabels(b *strings.Builder, labels map[string]string) {
	if len(labels) == 0 {
		return
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b.WriteString("LABEL")
	for _, k := range keys {
		fmt.Fprintf(b, " %s=%s", k, quote(labels[k]))
	}
	b.WriteString("\n")
}

// quote makes a Dockerfile double-quoted string: backslash and double quote escaped.
// Callers pass values without newlines (CheckLabel).
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// CheckLabel checks a label key and value for a Dockerfile LABEL: a key of
// [A-Za-z0-9._/-] and a value without control characters.
func CheckLabel(k, v string) error {
	if k == "" || strings.IndexFunc(k, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._/-", r))
	}) >= 0 {
		return fmt.Errorf("label key %q: want [A-Za-z0-9._/-]", k)
	}
	if strings.IndexFunc(v, func(r rune) bool { return r < ' ' || r == 0x7f }) >= 0 {
		return fmt.Errorf("label %s: value %q has a control character", k, v)
	}
	return nil
}

// WriteApp writes the application context to w: the Dockerfile and the tree under dir as
// app/. Regular files keep their permission bits, directories and relative symbolic links
// are kept as they are; files belong to root in the image. Anything else in dir (a device,
// a socket) is an error — pkg/safeextract never makes one.
func WriteApp(w io.Writer, dockerfile []byte, dir string) error {
	tw := tar.NewWriter(w)
	if err := addBytes(tw, "Dockerfile", dockerfile, 0o644); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("build context %s: %w", dir, err)
	}
	defer root.Close()
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := "app/" + p
		if p == "." {
			name = "app"
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: name, ModTime: fi.ModTime().UTC().Truncate(time.Second), Format: tar.FormatPAX}
		switch {
		case d.IsDir():
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, name+"/", int64(fi.Mode().Perm())
			return tw.WriteHeader(hdr)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := root.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, target, 0o777
			return tw.WriteHeader(hdr)
		case d.Type().IsRegular():
			f, err := root.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, int64(fi.Mode().Perm()), fi.Size()
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			n, err := io.Copy(tw, f)
			if err == nil && n != fi.Size() {
				err = fmt.Errorf("%s changed size while being read", p)
			}
			return err
		}
		return fmt.Errorf("%s: unsupported file type %v", p, d.Type())
	})
	if err != nil {
		return fmt.Errorf("build context %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("build context %s: %w", dir, err)
	}
	return nil
}

func addBytes(tw *tar.Writer, name string, data []byte, mode int64) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return fmt.Errorf("build context: %s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("build context: %s: %w", name, err)
	}
	return nil
}

// Base describes a base image made from scratch and a static busybox.
type Base struct {
	// Busybox is the path of a statically linked busybox binary.
	Busybox string
	// Applets are the applets' install paths, as `busybox --list-full` prints them
	// (bin/sh, usr/bin/env); each becomes a link to /bin/busybox.
	Applets []string
	// Labels are set on the image.
	Labels map[string]string
}

// baseFiles are the small files every base image has, so that tools that look up users
// work and the package's scripts have a /tmp.
var baseFiles = []struct {
	name string
	data string
}{
	{"rootfs/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
	{"rootfs/etc/group", "root:x:0:\nnogroup:x:65534:\n"},
}

// nohupScript is /usr/bin/nohup of a base whose busybox has no nohup applet: the command
// runs with SIGHUP ignored (POSIX nohup; output is not redirected to nohup.out, since
// containers have no terminal).
const nohupScript = "#!/bin/sh\ntrap '' HUP\nexec \"$@\"\n"

// ErrNoShell is a base whose applets do not include sh.
var ErrNoShell = errors.New("buildctx: busybox has no sh applet")

// WriteBase writes the context of a base image to w: FROM scratch, a root file system with
// /bin/busybox, a link per applet, /tmp (mode 1777), /root, /etc/passwd and /etc/group,
// and CMD ["/bin/sh"]. There is no ENV PATH: the engine gives a container without one
// the default PATH.
func WriteBase(w io.Writer, b Base) error {
	f, err := os.Open(b.Busybox)
	if err != nil {
		return fmt.Errorf("base context: busybox: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("base context: busybox: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("base context: busybox %s is not a regular file", b.Busybox)
	}
	links := map[string]bool{}
	for _, a := range b.Applets {
		a = path.Clean(strings.TrimPrefix(strings.TrimSpace(a), "/"))
		if a == "." || a == "" || strings.HasPrefix(a, "..") || a == "bin/busybox" {
			continue
		}
		links[a] = true
	}
	if !links["bin/sh"] {
		return fmt.Errorf("base context: %w (applets of %s)", ErrNoShell, b.Busybox)
	}
	var sb strings.Builder
	sb.WriteString("FROM scratch\nCOPY rootfs/ /\n")
	writeLabels(&sb, b.Labels)
	sb.WriteString(`CMD ["/bin/sh"]` + "\n")

	tw := tar.NewWriter(w)
	if err := addBytes(tw, "Dockerfile", []byte(sb.String()), 0o644); err != nil {
		return err
	}
	dirs := map[string]bool{"rootfs": true, "rootfs/bin": true, "rootfs/tmp": true, "rootfs/root": true, "rootfs/etc": true,
		"rootfs/usr": true, "rootfs/usr/bin": true}
	for l := range links {
		for d := path.Dir("rootfs/" + l); d != "rootfs" && d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList)
	for _, d := range dirList {
		mode := int64(0o755)
		switch d {
		case "rootfs/tmp":
			mode = 0o1777
		case "rootfs/root":
			mode = 0o700
		}
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: mode, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return fmt.Errorf("base context: %w", err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "rootfs/bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: fi.Size(), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return fmt.Errorf("base context: %w", err)
	}
	if n, err := io.Copy(tw, f); err != nil || n != fi.Size() {
		return fmt.Errorf("base context: copy busybox (%d of %d bytes): %v", n, fi.Size(), err)
	}
	linkList := make([]string, 0, len(links))
	for l := range links {
		linkList = append(linkList, l)
	}
	sort.Strings(linkList)
	for _, l := range linkList {
		// A relative link, so the link is right wherever the root is mounted.
		target, err := filepath.Rel(path.Dir("/"+l), "/bin/busybox")
		if err != nil {
			return fmt.Errorf("base context: applet %s: %w", l, err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: "rootfs/" + l, Typeflag: tar.TypeSymlink, Linkname: filepath.ToSlash(target), Mode: 0o777, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return fmt.Errorf("base context: %w", err)
		}
	}
	for _, bf := range baseFiles {
		if err := addBytes(tw, bf.name, []byte(bf.data), 0o644); err != nil {
			return err
		}
	}
	// Package start scripts commonly run `nohup app &`; Debian's busybox-static has no
	// nohup applet, so the base carries the POSIX utility as a two-line script when the
	// busybox lacks it.
	if !links["usr/bin/nohup"] && !links["bin/nohup"] {
		if err := addBytes(tw, "rootfs/usr/bin/nohup", []byte(nohupScript), 0o755); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("base context: %w", err)
	}
	return nil
}

// ParseApplets reads the output of `busybox --list-full`: one install path per line.
func ParseApplets(out []byte) []string {
	var list []string
	for line := range strings.SplitSeq(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			list = append(list, line)
		}
	}
	return list
}
