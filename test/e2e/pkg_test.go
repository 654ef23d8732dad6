//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// appSource is the test package's program: an HTTP server on the port in its first
// argument that answers / with the content of ./VERSION (the release directory, the
// scripts' working directory), and a health probe with -check URL. It is built static, so
// it runs in the agent's busybox image.
const appSource = `package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-check" {
		r, err := http.Get(os.Args[2])
		if err != nil || r.StatusCode != 200 {
			os.Exit(1)
		}
		return
	}
	v, err := os.ReadFile("VERSION")
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write(v) })
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	fmt.Println(http.ListenAndServe("0.0.0.0:"+os.Args[1], nil))
}
`

// buildApp compiles appSource once for the suite.
func buildApp(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(appSource), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module app\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), "go", "build", "-o", "app", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the test app: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "app"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pkg is a package written into the stack's FTP directory.
type pkg struct {
	service, version, file, sha256 string
}

// url is where the agents fetch it: the ftp service of the stack.
func (p pkg) url() string { return "ftp://ftp/" + p.file }

// makePkg writes SERVICE-VERSION.tar.gz (service path with dashes) into dir: berth.yaml,
// the app, its four scripts (as lib.sh's make_pkg in the acceptance checks) and VERSION.
func makePkg(t *testing.T, dir string, app []byte, service, version string, port int) pkg {
	t.Helper()
	descriptor := fmt.Sprintf(`service: %s
port: %d
scripts:
  start: bin/start
  stop: bin/stop
  health: bin/health
  reload: bin/reload
health:
  interval: 1s
  timeout: 1s
  rise: 1
  fall: 2
`, service, port)
	files := []struct {
		name string
		mode int64
		body []byte
	}{
		{"berth.yaml", 0o644, []byte(descriptor)},
		{"VERSION", 0o644, []byte(version)},
		{"bin/app", 0o755, app},
		{"bin/start", 0o755, []byte(fmt.Sprintf("#!/bin/sh\ncd \"$(dirname \"$0\")/..\" && nohup ./bin/app %d >app.log 2>&1 &\necho $! > \"$(dirname \"$0\")/../app.pid\"\n", port))},
		{"bin/stop", 0o755, []byte("#!/bin/sh\np=\"$(dirname \"$0\")/../app.pid\"; [ -f \"$p\" ] && kill \"$(cat \"$p\")\" 2>/dev/null; rm -f \"$p\"; exit 0\n")},
		{"bin/health", 0o755, []byte(fmt.Sprintf("#!/bin/sh\nexec \"$(dirname \"$0\")/app\" -check http://127.0.0.1:%d/healthz\n", port))},
		{"bin/reload", 0o755, []byte("#!/bin/sh\nexit 0\n")},
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: f.mode, Size: int64(len(f.body))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	name := strings.ReplaceAll(service, "/", "-") + "-" + version + ".tar.gz"
	if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return pkg{service: service, version: version, file: name, sha256: hex.EncodeToString(sum[:])}
}
