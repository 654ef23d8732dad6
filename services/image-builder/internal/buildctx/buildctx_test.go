package buildctx

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// entry is one tar entry as the tests compare it.
type entry struct {
	typ  byte
	mode int64
	link string
	data string
}

func readTar(t *testing.T, data []byte) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: owner %d:%d, want 0:0", h.Name, h.Uid, h.Gid)
		}
		out[h.Name] = entry{typ: h.Typeflag, mode: h.Mode, link: h.Linkname, data: string(b)}
	}
}

func TestDockerfile(t *testing.T) {
	got := string(Dockerfile("127.0.0.1:5000/berth/base:busybox", map[string]string{
		LabelVersion: "1.4.2", LabelService: "hotel/search", "team": `a "quoted" \ value`,
	}))
	want := "FROM 127.0.0.1:5000/berth/base:busybox\n" +
		"COPY app/ /app/\n" +
		`LABEL dev.berth.service="hotel/search" dev.berth.version="1.4.2" team="a \"quoted\" \\ value"` + "\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestCheckLabel(t *testing.T) {
	for _, tc := range []struct {
		k, v string
		ok   bool
	}{
		{"dev.berth.test", "x-1", true},
		{"org/team_name", "", true},
		{"", "v", false},
		{"a b", "v", false},
		{"a=b", "v", false},
		{"k", "line\nbreak", false},
	} {
		if err := CheckLabel(tc.k, tc.v); (err == nil) != tc.ok {
			t.Errorf("CheckLabel(%q, %q) = %v, want ok %v", tc.k, tc.v, err, tc.ok)
		}
	}
}

func TestWriteApp(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "berth.yaml"), []byte("service: a\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "bin", "start.sh"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Symlink("bin/start.sh", filepath.Join(dir, "start")))
	var buf bytes.Buffer
	must(WriteApp(&buf, []byte("FROM x\n"), dir))
	got := readTar(t, buf.Bytes())
	want := map[string]entry{
		"Dockerfile":       {typ: tar.TypeReg, mode: 0o644, data: "FROM x\n"},
		"app/":             {typ: tar.TypeDir, mode: 0o755},
		"app/berth.yaml":   {typ: tar.TypeReg, mode: 0o644, data: "service: a\n"},
		"app/bin/":         {typ: tar.TypeDir, mode: 0o755},
		"app/bin/start.sh": {typ: tar.TypeReg, mode: 0o755, data: "#!/bin/sh\n"},
		"app/start":        {typ: tar.TypeSymlink, mode: 0o777, link: "bin/start.sh"},
	}
	if len(got) != len(want) {
		t.Errorf("got %d entries %v, want %d", len(got), got, len(want))
	}
	for name, w := range want {
		// The temporary directory's own mode depends on the umask; only files are exact.
		if g, ok := got[name]; !ok || g.typ != w.typ || g.link != w.link || g.data != w.data || (w.typ != tar.TypeDir && g.mode != w.mode) {
			t.Errorf("entry %s: got %+v, want %+v", name, g, w)
		}
	}
}

func TestWriteAppRefusesOddFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A socket cannot go into a build context.
	l, err := listenUnix(filepath.Join(dir, "d", "s"))
	if err != nil {
		t.Skipf("no unix socket: %v", err)
	}
	defer l.Close()
	err = WriteApp(io.Discard, []byte("FROM x\n"), dir)
	if err == nil || !strings.Contains(err.Error(), "unsupported file type") {
		t.Errorf("got %v, want an unsupported file type error", err)
	}
}

func TestWriteBase(t *testing.T) {
	bb := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(bb, []byte("ELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	applets := ParseApplets([]byte("bin/sh\nbin/ls\nusr/bin/env\n\nsbin/init\nbin/busybox\n../etc/evil\n"))
	var buf bytes.Buffer
	if err := WriteBase(&buf, Base{Busybox: bb, Applets: applets, Labels: map[string]string{"dev.berth.base-image": "true"}}); err != nil {
		t.Fatal(err)
	}
	got := readTar(t, buf.Bytes())
	for name, w := range map[string]entry{
		"rootfs/bin/busybox":   {typ: tar.TypeReg, mode: 0o755, data: "ELF"},
		"rootfs/bin/sh":        {typ: tar.TypeSymlink, mode: 0o777, link: "busybox"},
		"rootfs/bin/ls":        {typ: tar.TypeSymlink, mode: 0o777, link: "busybox"},
		"rootfs/usr/bin/env":   {typ: tar.TypeSymlink, mode: 0o777, link: "../../bin/busybox"},
		"rootfs/sbin/init":     {typ: tar.TypeSymlink, mode: 0o777, link: "../bin/busybox"},
		"rootfs/tmp/":          {typ: tar.TypeDir, mode: 0o1777},
		"rootfs/usr/bin/":      {typ: tar.TypeDir, mode: 0o755},
		"rootfs/usr/bin/nohup": {typ: tar.TypeReg, mode: 0o755, data: nohupScript},
		"rootfs/etc/passwd":    {typ: tar.TypeReg, mode: 0o644, data: baseFiles[0].data},
		"rootfs/root/":         {typ: tar.TypeDir, mode: 0o700},
		"rootfs/etc/evil":      {},
		"rootfs/../etc/evil":   {},
		"rootfs/bin/busybox/":  {},
	} {
		g, ok := got[name]
		if w == (entry{}) {
			if ok {
				t.Errorf("entry %s: present, want absent", name)
			}
			continue
		}
		if !ok || g != w {
			t.Errorf("entry %s: got %+v (present %v), want %+v", name, g, ok, w)
		}
	}
	df := got["Dockerfile"].data
	for _, want := range []string{"FROM scratch\n", "COPY rootfs/ /\n", `LABEL dev.berth.base-image="true"`, `CMD ["/bin/sh"]`} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile %q lacks %q", df, want)
		}
	}
}

func TestWriteBaseNeedsShell(t *testing.T) {
	bb := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(bb, []byte("ELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := WriteBase(io.Discard, Base{Busybox: bb, Applets: []string{"bin/ls"}})
	if !errors.Is(err, ErrNoShell) {
		t.Errorf("got %v, want ErrNoShell", err)
	}
	err = WriteBase(io.Discard, Base{Busybox: filepath.Join(t.TempDir(), "missing"), Applets: []string{"bin/sh"}})
	if err == nil {
		t.Error("got nil for a missing busybox, want an error")
	}
}

func listenUnix(path string) (net.Listener, error) { return net.Listen("unix", path) }
