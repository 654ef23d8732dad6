package docker

import (
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseImage(t *testing.T) {
	const d = "sha256:29fd4815ccb8a97c197a31e815393f4a507ee737baf2b7ff2372dc299268cd5e"
	tests := []struct {
		ref        string
		want       Image
		wantPinned string
		bad        string // in the error when the reference is refused
	}{
		{ref: "127.0.0.1:5000/hotel/search@" + d, want: Image{Name: "127.0.0.1:5000/hotel/search", Digest: d}, wantPinned: "127.0.0.1:5000/hotel/search@" + d},
		{ref: "registry.example/hotel/search:1.4.2@" + d, want: Image{Name: "registry.example/hotel/search", Tag: "1.4.2", Digest: d}, wantPinned: "registry.example/hotel/search@" + d},
		{ref: "busybox@" + d, want: Image{Name: "docker.io/library/busybox", Digest: d}, wantPinned: "docker.io/library/busybox@" + d},
		{ref: "127.0.0.1:5000/hotel/search:1.4.2", bad: "not pinned by digest"},
		{ref: "127.0.0.1:5000/hotel/search", bad: "not pinned by digest"},
		{ref: "127.0.0.1:5000/Hotel@" + d, bad: "bad image reference"},
		{ref: "127.0.0.1:5000/hotel@sha256:abc", bad: "bad image reference"},
		{ref: "", bad: "bad image reference"},
	}
	for _, tt := range tests {
		got, err := ParseImage(tt.ref)
		if tt.bad != "" {
			if err == nil || !errors.Is(err, ErrBadReference) || !strings.Contains(err.Error(), tt.bad) {
				t.Errorf("ParseImage(%q): got %+v, %v; want an ErrBadReference saying %q", tt.ref, got, err, tt.bad)
			}
			continue
		}
		if err != nil || got != tt.want || got.Pinned() != tt.wantPinned {
			t.Errorf("ParseImage(%q): got %+v (%s), %v; want %+v (%s)", tt.ref, got, got.Pinned(), err, tt.want, tt.wantPinned)
		}
	}
}

// TestEngineDown: every call to an engine that is not there wraps ErrUnavailable.
func TestEngineDown(t *testing.T) {
	c, err := New("unix://" + t.TempDir() + "/docker.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := t.Context()
	if err := c.Ping(ctx); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ping: got %v, want ErrUnavailable", err)
	}
	if _, err := c.Inspect(ctx, "x"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Inspect: got %v, want ErrUnavailable", err)
	}
	if _, err := c.List(ctx, "a=b"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("List: got %v, want ErrUnavailable", err)
	}
	if err := c.Pull(ctx, "127.0.0.1:5000/x@sha256:"+strings.Repeat("0", 64)); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Pull: got %v, want ErrUnavailable", err)
	}
	if _, err := c.Exec(ctx, "x", ExecSpec{Cmd: []string{"true"}}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Exec: got %v, want ErrUnavailable", err)
	}
}

// TestCreateRefusesSharedNetworks: the host's network, the default bridge, none and
// another container's are refused before the engine is asked.
func TestCreateRefusesSharedNetworks(t *testing.T) {
	c, err := New("unix://" + t.TempDir() + "/docker.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, n := range []string{"host", "bridge", "default", "none", "container:abc"} {
		if _, err := c.Create(t.Context(), ContainerSpec{Name: "x", Image: "x", Network: n}); !errors.Is(err, ErrInvalid) {
			t.Errorf("Create on network %q: got %v, want ErrInvalid", n, err)
		}
	}
}
