package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	imagev1 "github.com/berthdev/berth/proto/image/v1"
	imagebuilder "github.com/berthdev/berth/services/image-builder"
	"github.com/berthdev/berth/services/image-builder/registrytest"
)

func imagesCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	root := NewRoot()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"images"}, args...))
	err := root.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

func TestImagesLs(t *testing.T) {
	addr, c := hostsCoord(t)
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, r := range []*imagev1.ImageRecord{
		{Service: "hotel/search", Version: "1.4.2", Digest: "sha256:" + strings.Repeat("b", 64), Reference: "r/hotel/search:1.4.2",
			BaseImage: "r/berth/base:busybox", BuiltAt: timestamppb.New(at.Add(time.Hour))},
		{Service: "hotel/search", Version: "1.4.1", Digest: "sha256:" + strings.Repeat("a", 64), BuiltAt: timestamppb.New(at)},
		{Service: "flight/price", Version: "2", Digest: "sha256:" + strings.Repeat("c", 64), BuiltAt: timestamppb.New(at)},
	} {
		b, err := protojson.Marshal(r)
		putProto(t, c, imagebuilder.ImagesPrefix+"/"+r.GetService()+"/"+r.GetVersion(), b, err)
	}
	// A node that is not a record is left out.
	putProto(t, c, imagebuilder.ImagesPrefix+"/junk", []byte("not json"), nil)

	out, _, err := imagesCLI(t, "ls", "--coord", addr)
	if err != nil {
		t.Fatalf("ls: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{"SERVICE", "flight/price 2", "hotel/search 1.4.1", "hotel/search 1.4.2"}
	if len(lines) != len(want) {
		t.Fatalf("ls: got %d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i, w := range want {
		if f := strings.Fields(lines[i]); strings.Join(f[:len(strings.Fields(w))], " ") != w {
			t.Errorf("ls line %d: got %q, want it to start with %q", i, lines[i], w)
		}
	}
	if !strings.Contains(lines[3], "sha256:bbbbbbbbbbb") || !strings.Contains(lines[3], "2026-05-01T13:00:00Z") || !strings.Contains(lines[3], "r/berth/base:busybox") {
		t.Errorf("ls row %q: want the short digest, the build time and the base", lines[3])
	}

	out, _, err = imagesCLI(t, "ls", "hotel", "--coord", addr, "--json")
	if err != nil {
		t.Fatalf("ls --json: %v", err)
	}
	var recs []map[string]any
	if err := json.Unmarshal([]byte(out), &recs); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, out)
	}
	if len(recs) != 2 || recs[0]["version"] != "1.4.1" || recs[1]["base_image"] != "r/berth/base:busybox" {
		t.Errorf("ls hotel --json: got %v, want the two hotel/search records", recs)
	}
	if _, _, err := imagesCLI(t, "ls", "Bad/Path", "--coord", addr); err == nil {
		t.Error("ls Bad/Path: got nil, want an error about the service path")
	}
}

func TestImagesBuildWithoutBuilder(t *testing.T) {
	ns := natstest.RunServer(t)
	_, _, err := imagesCLI(t, "build", "hotel/search", "--nats", ns.URL(), "--version", "1", "--package", "file:///x.tar.gz",
		"--sha256", strings.Repeat("a", 64), "--timeout", "5s")
	var ex *ExitError
	if !errors.As(err, &ex) || ex.Code != imagesExitRetryable || !strings.Contains(err.Error(), "no berth-image-builder answers") {
		t.Errorf("build without a builder: got %v, want exit %d saying no builder answers", err, imagesExitRetryable)
	}
	if _, _, err := imagesCLI(t, "build", "hotel/search", "--nats", ns.URL(), "--version", "1"); err == nil {
		t.Error("build without --package and --sha256: got nil, want an error")
	}
}

// TestImagesBuildAndBase makes a base image with `berth images base`, then builds a
// package with `berth images build` through a real builder: built, then cached; and a
// package without berth.yaml exits 1 with an application failure.
func TestImagesBuildAndBase(t *testing.T) {
	registrytest.RequireDocker(t)
	reg := registrytest.Run(t)
	run := strings.ToLower(rand.Text()[:10])
	t.Cleanup(func() { imagesCleanup(t, "dev.berth.test="+run) })

	base := "berth-test/base:" + run
	out, _, err := imagesCLI(t, "base", "--name", base, "--registry", reg.Addr, "-q")
	if err != nil {
		t.Fatalf("images base: %v", err)
	}
	if !strings.Contains(out, "pushed     "+reg.Addr+"/"+base+"@sha256:") {
		t.Fatalf("images base output %q: want the pushed digest", out)
	}
	// The CLI sets no test label on the base: remove it by name.
	t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", reg.Addr+"/"+base).Run() })

	addr, cl := hostsCoord(t)
	ns := natstest.RunServer(t)
	bus, err := natsbus.Connect(t.Context(), natsbus.Config{URLs: []string{ns.URL()}, Name: "builder"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = bus.Close(ctx)
	})
	if err := bus.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	cfg := imagebuilder.DefaultConfig()
	cfg.Name, cfg.ListenMetrics, cfg.Registry, cfg.WorkDir = "cli", "", reg.Addr, t.TempDir()
	cfg.DefaultBaseImage, cfg.ImageLabels = reg.Addr+"/"+base, []string{"dev.berth.test=" + run}
	b, err := imagebuilder.New(cfg, imagebuilder.Deps{Bus: bus, Coord: cl})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("builder: %v", err)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); !b.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("builder not ready")
		}
	}

	svc := "berth-test/cli" + run
	url, sum := imagesPackage(t, map[string]string{
		"berth.yaml":   "service: " + svc + "\nscripts:\n  start: start.sh\n  stop: start.sh\n",
		"start.sh":     "#!/bin/sh\n",
		"static/index": "hello\n",
	})
	args := []string{"build", svc, "--nats", ns.URL(), "--version", "1.0", "--package", url, "--sha256", sum, "--timeout", "2m"}
	out, _, err = imagesCLI(t, args...)
	if err != nil {
		t.Fatalf("images build: %v", err)
	}
	for _, want := range []string{"reference  " + reg.Addr + "/" + svc + ":1.0", "digest     sha256:", "cached     false", "--- build log", "Successfully tagged"} {
		if !strings.Contains(out, want) {
			t.Errorf("first build output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = imagesCLI(t, append(args, "--json")...)
	var reply map[string]any
	if err != nil || json.Unmarshal([]byte(out), &reply) != nil || reply["cached"] != true {
		t.Errorf("second build --json: got %v, %s; want a cached reply", err, out)
	}

	badURL, badSum := imagesPackage(t, map[string]string{"start.sh": "#!/bin/sh\n"})
	_, errOut, err := imagesCLI(t, "build", svc, "--nats", ns.URL(), "--version", "2.0", "--package", badURL, "--sha256", badSum)
	var ex *ExitError
	if !errors.As(err, &ex) || ex.Code != imagesExitFailed || !strings.Contains(err.Error(), "application failure") || !strings.Contains(err.Error(), "berth.yaml") {
		t.Errorf("build of a package without berth.yaml: got %v (stderr %q), want exit 1, an application failure about berth.yaml", err, errOut)
	}

	out, _, err = imagesCLI(t, "ls", svc, "--coord", addr)
	if err != nil || !strings.Contains(out, svc) || strings.Count(out, "\n") != 2 {
		t.Errorf("ls after the builds: got %v:\n%s\nwant one record", err, out)
	}
}

// imagesPackage writes a .tar.gz of files and returns its file:// URL and sha256.
func imagesPackage(t *testing.T, files map[string]string) (string, string) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, data := range files {
		mode := int64(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pkg.tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return "file://" + path, hex.EncodeToString(sum[:])
}

// imagesCleanup removes the images carrying label.
func imagesCleanup(t *testing.T, label string) {
	out, err := exec.Command("docker", "images", "-q", "--filter", "label="+label).Output()
	if err != nil {
		t.Errorf("list images %s: %v", label, err)
		return
	}
	for id := range strings.FieldsSeq(string(out)) {
		_ = exec.Command("docker", "rmi", "-f", id).Run()
	}
}
