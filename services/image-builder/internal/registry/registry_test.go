package registry_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/services/image-builder/internal/registry"
	"github.com/berthdev/berth/services/image-builder/registrytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// push stores a document in the registry with the v2 API: a blob upload, or a manifest
// under ref when mediaType is set.
func push(t *testing.T, addr, name, ref, mediaType string, body []byte) string {
	t.Helper()
	d := digestOf(body)
	var req *http.Request
	if mediaType == "" {
		resp, err := http.Post("http://"+addr+"/v2/"+name+"/blobs/uploads/", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start upload: %s", resp.Status)
		}
		loc := resp.Header.Get("Location")
		req, _ = http.NewRequest(http.MethodPut, loc+"&digest="+d, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/octet-stream")
	} else {
		req, _ = http.NewRequest(http.MethodPut, "http://"+addr+"/v2/"+name+"/manifests/"+ref, bytes.NewReader(body))
		req.Header.Set("Content-Type", mediaType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("put %s %s: %s %s", name, ref, resp.Status, msg)
	}
	return d
}

// image pushes an image with the labels and no layers as name:tag and returns its
// manifest digest.
func image(t *testing.T, addr, name, tag string, labels map[string]string) string {
	t.Helper()
	cfg, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "config": map[string]any{"Labels": labels},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{}}})
	cd := push(t, addr, name, "", "", cfg)
	man, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
		"config": map[string]any{"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(cfg), "digest": cd},
		"layers": []any{}})
	return push(t, addr, name, tag, "application/vnd.docker.distribution.manifest.v2+json", man)
}

func TestRealRegistry(t *testing.T) {
	reg := registrytest.Run(t)
	c, err := registry.New(registry.Config{Host: reg.Addr, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := t.Context()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if d, ok, err := c.Digest(ctx, "hotel/search", "1.0"); err != nil || ok {
		t.Errorf("Digest of a missing tag: got %q, %v, %v; want not found", d, ok, err)
	}
	want := image(t, reg.Addr, "hotel/search", "1.0", map[string]string{"dev.berth.package-sha256": "abc"})
	d, ok, err := c.Digest(ctx, "hotel/search", "1.0")
	if err != nil || !ok || d != want {
		t.Errorf("Digest: got %q, %v, %v; want %q", d, ok, err, want)
	}
	labels, ok, err := c.Labels(ctx, "hotel/search", "1.0")
	if err != nil || !ok || labels["dev.berth.package-sha256"] != "abc" {
		t.Errorf("Labels: got %v, %v, %v; want the package label", labels, ok, err)
	}
	// An index is followed to its linux/amd64 image.
	other := image(t, reg.Addr, "hotel/search", "arm", map[string]string{"which": "arm"})
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []any{
			map[string]any{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": other, "size": 1,
				"platform": map[string]string{"os": "linux", "architecture": "arm64"}},
			map[string]any{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": want, "size": 1,
				"platform": map[string]string{"os": "linux", "architecture": "amd64"}},
		}})
	idxDigest := push(t, reg.Addr, "hotel/search", "multi", "application/vnd.oci.image.index.v1+json", idx)
	if d, ok, err := c.Digest(ctx, "hotel/search", "multi"); err != nil || !ok || d != idxDigest {
		t.Errorf("Digest of an index: got %q, %v, %v; want %q", d, ok, err, idxDigest)
	}
	if labels, _, err := c.Labels(ctx, "hotel/search", "multi"); err != nil || labels["dev.berth.package-sha256"] != "abc" {
		t.Errorf("Labels of an index: got %v, %v; want the amd64 image's", labels, err)
	}
	if _, ok, err := c.Labels(ctx, "hotel/search", "missing"); err != nil || ok {
		t.Errorf("Labels of a missing tag: got %v, %v; want not found", ok, err)
	}

	// With an endpoint, requests go there while Host stays the name in references.
	ep, err := registry.New(registry.Config{Host: "registry.invalid:5000", Endpoint: reg.Addr, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	if d, ok, err := ep.Digest(ctx, "hotel/search", "1.0"); err != nil || !ok || d != want || ep.Host() != "registry.invalid:5000" {
		t.Errorf("Digest through the endpoint: got %q, %v, %v (host %s); want %q", d, ok, err, ep.Host(), want)
	}

	reg.Stop()
	if _, _, err := c.Digest(ctx, "hotel/search", "1.0"); !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("Digest with the registry down: got %v, want ErrUnavailable", err)
	}
}

// TestStatusClasses checks how answers a test registry cannot be made to give are
// classified.
func TestStatusClasses(t *testing.T) {
	for _, tc := range []struct {
		status int
		want   error
	}{
		{http.StatusUnauthorized, registry.ErrDenied},
		{http.StatusForbidden, registry.ErrDenied},
		{http.StatusInternalServerError, registry.ErrUnavailable},
		{http.StatusTooManyRequests, registry.ErrUnavailable},
		{http.StatusBadRequest, registry.ErrProtocol},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if u, p, ok := r.BasicAuth(); !ok || u != "u" || p != "p" {
					t.Errorf("basic auth: got %q %q %v, want u p", u, p, ok)
				}
				w.WriteHeader(tc.status)
			}))
			defer srv.Close()
			c, err := registry.New(registry.Config{Host: srv.Listener.Addr().String(), Insecure: true, Username: "u", Password: "p"})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, _, err := c.Digest(context.Background(), "a/b", "1"); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestNewRefusesBadHost(t *testing.T) {
	for _, h := range []string{"", "a/b", "a b"} {
		if _, err := registry.New(registry.Config{Host: h}); err == nil {
			t.Errorf("New(%q): got nil, want an error", h)
		}
	}
}
