package engine_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/services/image-builder/internal/engine"
	"github.com/berthdev/berth/services/image-builder/registrytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseReference(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want engine.Reference
		bad  bool
	}{
		{in: "127.0.0.1:5000/hotel/search:1.4.2", want: engine.Reference{Domain: "127.0.0.1:5000", Path: "hotel/search", Tag: "1.4.2"}},
		{in: "busybox", want: engine.Reference{Domain: "docker.io", Path: "library/busybox", Tag: "latest"}},
		{in: "localhost/a/b@sha256:" + strings.Repeat("a", 64), want: engine.Reference{Domain: "localhost", Path: "a/b", Digest: "sha256:" + strings.Repeat("a", 64)}},
		{in: "hotel/Search:1", bad: true},
		{in: "", bad: true},
		{in: "a:b:c", bad: true},
	} {
		got, err := engine.ParseReference(tc.in)
		if tc.bad {
			if !errors.Is(err, engine.ErrBadReference) {
				t.Errorf("ParseReference(%q) error = %v, want ErrBadReference", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseReference(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestValidTag(t *testing.T) {
	for in, want := range map[string]bool{
		"1.4.2": true, "v1_rc-2": true, "latest": true, strings.Repeat("a", 128): true,
		"": false, ".1": false, "-1": false, "1+build": false, "a/b": false, strings.Repeat("a", 129): false,
	} {
		if got := engine.ValidTag(in); got != want {
			t.Errorf("ValidTag(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestEngineDown(t *testing.T) {
	e, err := engine.New("unix://" + t.TempDir() + "/docker.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Ping(t.Context()); !errors.Is(err, engine.ErrUnavailable) {
		t.Errorf("Ping: got %v, want ErrUnavailable", err)
	}
	if _, err := e.EnsureImage(t.Context(), "127.0.0.1:1/a/b:1", ""); !errors.Is(err, engine.ErrUnavailable) {
		t.Errorf("EnsureImage: got %v, want ErrUnavailable", err)
	}
	if _, err := e.Build(t.Context(), bytes.NewReader(nil), engine.BuildOptions{Tag: "127.0.0.1:1/a/b:1"}); !errors.Is(err, engine.ErrUnavailable) {
		t.Errorf("Build: got %v, want ErrUnavailable", err)
	}
	if _, err := e.Push(t.Context(), "127.0.0.1:1/a/b:1", "", nil); !errors.Is(err, engine.ErrUnavailable) {
		t.Errorf("Push: got %v, want ErrUnavailable", err)
	}
}

// contextOf is a build context holding only a Dockerfile.
func contextOf(t *testing.T, dockerfile string) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(dockerfile)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

// TestRealEngine builds, pushes, pulls and lists with the machine's engine and a registry
// on loopback, and checks how each failure is classified.
func TestRealEngine(t *testing.T) {
	registrytest.RequireDocker(t)
	reg := registrytest.Run(t)
	e, err := engine.New("")
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: the image cleanup below still has the client.
	t.Cleanup(func() { e.Close() })
	ctx := t.Context()
	if err := e.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	run := rand.Text()
	label := "dev.berth.test=" + run
	t.Cleanup(func() {
		if _, err := e.RemoveLabelled(context.Background(), label); err != nil {
			t.Errorf("clean up: %v", err)
		}
	})
	ref := reg.Addr + "/berth-test/engine:" + strings.ToLower(run[:8])

	var lines []string
	id, err := e.Build(ctx, contextOf(t, "FROM scratch\nLABEL dev.berth.test="+run+"\n"), engine.BuildOptions{Tag: ref, Log: func(l string) { lines = append(lines, l) }})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if !strings.HasPrefix(id, "sha256:") || !strings.Contains(strings.Join(lines, "\n"), "Successfully tagged "+ref) {
		t.Errorf("build: id %q, log %q; want an image id and the tagging line", id, lines)
	}
	imgs, err := e.List(ctx, label)
	if err != nil || len(imgs) != 1 || imgs[0].ID != id {
		t.Errorf("list %s: got %+v, %v; want the built image %s", label, imgs, err, id)
	}
	digest, err := e.Push(ctx, ref, "", nil)
	if err != nil || !strings.HasPrefix(digest, "sha256:") {
		t.Fatalf("push: %q, %v", digest, err)
	}
	if pulled, err := e.EnsureImage(ctx, ref, ""); err != nil || pulled {
		t.Errorf("EnsureImage of a local image: pulled %v, %v; want false, nil", pulled, err)
	}
	if err := e.Remove(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if pulled, err := e.EnsureImage(ctx, ref, engine.EncodeAuth("", "")); err != nil || !pulled {
		t.Errorf("EnsureImage of a pushed image: pulled %v, %v; want true, nil", pulled, err)
	}

	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"pull a missing repository", e.Pull(ctx, reg.Addr+"/berth-test/missing:1", ""), engine.ErrNotFound},
		{"pull from a closed port", e.Pull(ctx, "127.0.0.1:1/berth-test/x:1", ""), engine.ErrRegistryUnavailable},
		{"build a bad Dockerfile", func() error {
			_, err := e.Build(ctx, contextOf(t, "FROM scratch\nBOGUS x\n"), engine.BuildOptions{Tag: ref + "-bad"})
			return err
		}(), engine.ErrBuild},
		{"build on a missing base", func() error {
			_, err := e.Build(ctx, contextOf(t, "FROM "+reg.Addr+"/berth-test/missing:1\n"), engine.BuildOptions{Tag: ref + "-nobase"})
			return err
		}(), engine.ErrBuild},
		{"push an image the engine lacks", func() error {
			_, err := e.Push(ctx, reg.Addr+"/berth-test/never-built:1", "", nil)
			return err
		}(), engine.ErrNotFound},
		{"bad reference", func() error { _, err := e.EnsureImage(ctx, "hotel/Search:1", ""); return err }(), engine.ErrBadReference},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, tc.err, tc.want)
		}
	}

	// A registry that went away makes the push fail as unavailable.
	reg.Stop()
	if _, err := e.Push(ctx, ref, "", nil); !errors.Is(err, engine.ErrRegistryUnavailable) {
		t.Errorf("push to a stopped registry: got %v, want ErrRegistryUnavailable", err)
	}
}
