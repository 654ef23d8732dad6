package images_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/natsbus"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	imagev1 "github.com/berthdev/berth/proto/image/v1"
	"github.com/berthdev/berth/proto/subjects"
	imagebuilder "github.com/berthdev/berth/services/image-builder"
)

// TestFirstRequestBuildsSecondIsCached asks twice for the same version over NATS: the
// first request builds, pushes and records the image; the second answers from the
// record without building (the build counter and the engine's image list say so).
func TestFirstRequestBuildsSecondIsCached(t *testing.T) {
	e := newEnv(t)
	// Ask the registry on every request, so that the stale record below is seen at once.
	b, _ := e.startBuilder("b1", func(c *imagebuilder.Config) { c.ConfirmTTL = 0 })
	svc := e.service("search")
	url, sha := e.writePackage(append([]pkgFile{descriptorFor(svc)}, appFiles...)...)
	req := &imagev1.BuildRequest{Service: svc, Version: "1.4.2", PackageUrl: url, PackageSha256: sha}

	first, err := e.request(req)
	if err != nil {
		t.Fatalf("first request: %v", err)
	}
	wantRef := e.reg.Addr + "/" + svc + ":1.4.2"
	if first.GetCached() || first.GetReference() != wantRef || !strings.HasPrefix(first.GetDigest(), "sha256:") || len(first.GetBuildLog()) == 0 ||
		first.GetBaseImage() != e.base {
		t.Fatalf("first reply %v: want a fresh build of %s on %s with a digest and a log", first, wantRef, e.base)
	}
	if got := b.builds(); got != 1 {
		t.Errorf("builds after the first request: got %v, want 1", got)
	}
	imgs := e.engineImages(svc)
	if len(imgs) != 1 {
		t.Errorf("engine images of %s: got %v, want 1", svc, imgs)
	}
	rec := e.record(svc, "1.4.2")
	if rec.GetDigest() != first.GetDigest() || rec.GetPackageSha256() != sha || rec.GetBaseImage() != e.base || rec.GetReference() != wantRef ||
		rec.GetBuilder() != "b1" || rec.GetBuiltAt() == nil {
		t.Errorf("record %v: want digest %s, package %s, base %s, builder b1", rec, first.GetDigest(), sha, e.base)
	}
	if got := e.registryDigest(svc, "1.4.2"); got != first.GetDigest() {
		t.Errorf("registry digest %q, want %q", got, first.GetDigest())
	}

	second, err := e.request(req)
	if err != nil {
		t.Fatalf("second request: %v", err)
	}
	if !second.GetCached() || second.GetDigest() != first.GetDigest() || second.GetReference() != wantRef {
		t.Errorf("second reply %v: want cached %s", second, first.GetDigest())
	}
	if got := b.builds(); got != 1 {
		t.Errorf("builds after the second request: got %v, want 1", got)
	}
	if got := e.engineImages(svc); len(got) != 1 || got[0] != imgs[0] {
		t.Errorf("engine images after the second request: got %v, want %v", got, imgs)
	}
	if got := b.counter("berth_image_builder_requests_total", map[string]string{"source": "rpc", "outcome": "cached"}); got != 1 {
		t.Errorf("cached requests: got %v, want 1", got)
	}
	if got, want := strings.Join(e.eventTypes(svc), ","), "requested,built"; got != want {
		t.Errorf("events: got %s, want %s", got, want)
	}

	// The image is the base plus the package, labelled, and its scripts run in it.
	out, err := exec.Command("docker", "image", "inspect", "--format", "{{json .Config.Labels}}", wantRef).Output()
	if err != nil {
		t.Fatal(err)
	}
	var labels map[string]string
	if err := json.Unmarshal(out, &labels); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"dev.berth.service": svc, "dev.berth.version": "1.4.2", "dev.berth.package-sha256": sha, "dev.berth.base": e.base} {
		if labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, labels[k], v)
		}
	}
	out, err = exec.Command("docker", "run", "--rm", "--label", e.label, "--network", "none", "-w", "/app", wantRef, "sh", "-c", "pwd; ./bin/start.sh; head -1 berth.yaml").CombinedOutput()
	if err != nil {
		t.Fatalf("run the image: %v: %s", err, out)
	}
	if got, want := string(out), "/app\nstarted\nservice: "+svc+"\n"; got != want {
		t.Errorf("inside the image: got %q, want %q", got, want)
	}

	// A record lost from coord is found again in the registry, without a build.
	if _, err := e.coord.Delete(t.Context(), imagebuilder.ImagesPrefix+"/"+svc+"/1.4.2"); err != nil {
		t.Fatal(err)
	}
	third, err := e.request(req)
	if err != nil || !third.GetCached() || third.GetDigest() != first.GetDigest() {
		t.Errorf("request after losing the record: got %v, %v; want cached %s", third, err, first.GetDigest())
	}
	if rec := e.record(svc, "1.4.2"); rec.GetDigest() != first.GetDigest() {
		t.Errorf("record after adoption: got %v, want digest %s", rec, first.GetDigest())
	}
	if got := b.builds(); got != 1 {
		t.Errorf("builds after adoption: got %v, want 1", got)
	}

	// A record whose image left the registry is stale: the image is built again.
	e.deleteTag(svc, "1.4.2")
	fourth, err := e.request(req)
	if err != nil || fourth.GetCached() {
		t.Fatalf("request after the image left the registry: got %v, %v; want a fresh build", fourth, err)
	}
	if got := b.builds(); got != 2 {
		t.Errorf("builds after the image left the registry: got %v, want 2", got)
	}
	if d := e.registryDigest(svc, "1.4.2"); d == "" || e.record(svc, "1.4.2").GetDigest() != d || fourth.GetDigest() != d {
		t.Errorf("after the rebuild: registry %q, record %v, reply %s; want one digest", d, e.record(svc, "1.4.2"), fourth.GetDigest())
	}

	// A version is immutable: another package for it is refused.
	url2, sha2 := e.writePackage(append([]pkgFile{descriptorFor(svc), {"extra", 0o644, "x"}}, appFiles...)...)
	_, err = e.request(&imagev1.BuildRequest{Service: svc, Version: "1.4.2", PackageUrl: url2, PackageSha256: sha2})
	wantFailure(t, "another package for a built version", err, commonv1.Code_CODE_FAILED_PRECONDITION, imagebuilder.ClassApplication, "immutable")
}

// TestWorkQueue asks through BERTH_WORK: the outcome is an event, built and then cached.
func TestWorkQueue(t *testing.T) {
	e := newEnv(t)
	b, _ := e.startBuilder("b1", nil)
	svc := e.service("work")
	url, sha := e.writePackage(append([]pkgFile{descriptorFor(svc)}, appFiles...)...)
	req := &imagev1.BuildRequest{Service: svc, Version: "2.0", PackageUrl: url, PackageSha256: sha}
	if err := e.bus.PublishWork(t.Context(), subjects.WorkBuild, req, natsbus.WithID("req-1")); err != nil {
		t.Fatal(err)
	}
	built := e.waitEvent(svc, imagebuilder.EventBuilt, time.Minute)
	if rec := e.record(svc, "2.0"); rec.GetDigest() == "" || rec.GetDigest() != built.GetDigest() || len(built.GetBuildLog()) == 0 {
		t.Errorf("built event %v and record %v: want the same digest and a log", built, rec)
	}
	if err := e.bus.PublishWork(t.Context(), subjects.WorkBuild, req, natsbus.WithID("req-2")); err != nil {
		t.Fatal(err)
	}
	cached := e.waitEvent(svc, imagebuilder.EventCached, 30*time.Second)
	if cached.GetDigest() != built.GetDigest() {
		t.Errorf("cached event digest %s, want %s", cached.GetDigest(), built.GetDigest())
	}
	if got := b.builds(); got != 1 {
		t.Errorf("builds: got %v, want 1", got)
	}

	// A replica trusts the registry's confirmation of a record for confirm_ttl: within it,
	// a cache hit does not ask the registry (a tag deleted meanwhile goes unseen).
	b2, _ := e.startBuilder("b2", func(c *imagebuilder.Config) { c.ConfirmTTL = time.Hour })
	if r, err := b2.Build(t.Context(), req); err != nil || !r.GetCached() {
		t.Fatalf("b2 first request: got %v, %v; want cached", r, err)
	}
	e.deleteTag(svc, "2.0")
	if r, err := b2.Build(t.Context(), req); err != nil || !r.GetCached() || r.GetDigest() != built.GetDigest() {
		t.Errorf("b2 request within confirm_ttl: got %v, %v; want cached %s", r, err, built.GetDigest())
	}
	if got := b2.builds(); got != 0 {
		t.Errorf("b2 builds: got %v, want 0", got)
	}
}

// TestConcurrentRequestsBuildOnce sends concurrent requests for one version to two
// replicas that share coord and the engine: one build, one digest for all.
func TestConcurrentRequestsBuildOnce(t *testing.T) {
	e := newEnv(t)
	b1, _ := e.startBuilder("b1", nil)
	b2, _ := e.startBuilder("b2", nil)
	svc := e.service("concurrent")
	url, sha := e.writePackage(append([]pkgFile{descriptorFor(svc)}, appFiles...)...)
	req := &imagev1.BuildRequest{Service: svc, Version: "3.1", PackageUrl: url, PackageSha256: sha}

	const perReplica = 3
	var wg sync.WaitGroup
	replies := make([]*imagev1.BuildReply, 2*perReplica)
	errs := make([]error, 2*perReplica)
	for i := range replies {
		b := b1
		if i%2 == 1 {
			b = b2
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			replies[i], errs[i] = b.Build(ctx, req)
		})
	}
	wg.Wait()
	fresh := 0
	for i, r := range replies {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if r.GetDigest() != replies[0].GetDigest() {
			t.Errorf("request %d: digest %s, want %s like request 0", i, r.GetDigest(), replies[0].GetDigest())
		}
		if !r.GetCached() {
			fresh++
		}
	}
	if fresh != 1 {
		t.Errorf("fresh builds among the replies: got %d, want 1", fresh)
	}
	if got := b1.builds() + b2.builds(); got != 1 {
		t.Errorf("builds on both replicas: got %v (b1 %v, b2 %v), want 1", got, b1.builds(), b2.builds())
	}
	if got := e.engineImages(svc); len(got) != 1 {
		t.Errorf("engine images of %s: got %v, want 1", svc, got)
	}
	n := 0
	for _, ev := range e.events(svc) {
		if ev.typ == imagebuilder.EventBuilt {
			n++
		}
	}
	if n != 1 {
		t.Errorf("image.built events: got %d, want 1 (%v)", n, e.eventTypes(svc))
	}
	if rec := e.record(svc, "3.1"); rec.GetDigest() != replies[0].GetDigest() {
		t.Errorf("record %v, want digest %s", rec, replies[0].GetDigest())
	}
}

// wantFailure checks a failed request's code, class and message.
func wantFailure(t *testing.T, name string, err error, code commonv1.Code, class, msg string) {
	t.Helper()
	var se *natsbus.StatusError
	if !errors.As(err, &se) {
		t.Errorf("%s: got %v, want a %s status error", name, err, code)
		return
	}
	if se.Code != code || se.Details["failure_class"] != class || !strings.Contains(se.Message, msg) {
		t.Errorf("%s: got %s (class %q): %s; want %s, %s, a message containing %q", name, se.Code, se.Details["failure_class"], se.Message, code, class, msg)
	}
}

// TestApplicationFailures asks for images that can never be built: each fails as an
// application failure saying what to do, and nothing is recorded or pushed.
func TestApplicationFailures(t *testing.T) {
	e := newEnv(t)
	b, _ := e.startBuilder("b1", nil)
	svc := e.service("broken")
	good := append([]pkgFile{descriptorFor(svc)}, appFiles...)
	noDescriptorURL, noDescriptorSHA := e.writePackage(appFiles...)
	otherURL, otherSHA := e.writePackage(append([]pkgFile{descriptorFor("someone/else")}, appFiles...)...)
	badURL, badSHA := e.writePackage(append([]pkgFile{{"berth.yaml", 0o644, "service: " + svc + "\nprot: 8080\n"}}, appFiles...)...)
	goodURL, goodSHA := e.writePackage(good...)
	treeSvc := e.service("tree/app")
	treeURL, treeSHA := e.writePackage(append([]pkgFile{descriptorFor(treeSvc)}, appFiles...)...)
	missingBase := e.reg.Addr + "/berth-test/no-such-base:1"
	node, _ := protojson.Marshal(&controllerv1.ServiceNode{Labels: map[string]string{imagebuilder.BaseImageLabel: missingBase}})
	// The label is set on the parent: the nearest node up the tree wins.
	if _, err := e.coord.Put(t.Context(), imagebuilder.TreePrefix+"/"+filepath.Dir(treeSvc), node); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name                 string
		req                  *imagev1.BuildRequest
		code                 commonv1.Code
		msg                  string
		field                string
		built                bool // whether the failure happens in a build (and is an event)
		service, versionPath string
	}{
		{name: "no berth.yaml", req: &imagev1.BuildRequest{Service: svc, Version: "1", PackageUrl: noDescriptorURL, PackageSha256: noDescriptorSHA},
			code: commonv1.Code_CODE_FAILED_PRECONDITION, msg: "has no berth.yaml at its root", built: true},
		{name: "berth.yaml of another service", req: &imagev1.BuildRequest{Service: svc, Version: "2", PackageUrl: otherURL, PackageSha256: otherSHA},
			code: commonv1.Code_CODE_FAILED_PRECONDITION, msg: `berth.yaml is for service "someone/else"`, built: true},
		{name: "invalid berth.yaml", req: &imagev1.BuildRequest{Service: svc, Version: "3", PackageUrl: badURL, PackageSha256: badSHA},
			code: commonv1.Code_CODE_FAILED_PRECONDITION, msg: `unknown field "prot"`, built: true},
		{name: "missing base image", req: &imagev1.BuildRequest{Service: svc, Version: "4", PackageUrl: goodURL, PackageSha256: goodSHA, BaseImage: missingBase},
			code: commonv1.Code_CODE_FAILED_PRECONDITION, msg: "does not exist", field: "base_image", built: true},
		{name: "missing base image from the tree", req: &imagev1.BuildRequest{Service: treeSvc, Version: "1", PackageUrl: treeURL, PackageSha256: treeSHA},
			code: commonv1.Code_CODE_FAILED_PRECONDITION, msg: "berth images base", field: "base_image", built: true},
		{name: "checksum mismatch", req: &imagev1.BuildRequest{Service: svc, Version: "5", PackageUrl: goodURL, PackageSha256: strings.Repeat("0", 64)},
			code: commonv1.Code_CODE_INVALID_ARGUMENT, msg: "checksum", field: "package_sha256", built: true},
		{name: "missing package", req: &imagev1.BuildRequest{Service: svc, Version: "6", PackageUrl: "file://" + t.TempDir() + "/none.tar.gz", PackageSha256: strings.Repeat("a", 64)},
			code: commonv1.Code_CODE_FAILED_PRECONDITION, msg: "not found", built: true},
		{name: "bad version", req: &imagev1.BuildRequest{Service: svc, Version: "1+build", PackageUrl: goodURL, PackageSha256: goodSHA},
			code: commonv1.Code_CODE_INVALID_ARGUMENT, msg: "not an image tag", field: "version"},
		{name: "bad service", req: &imagev1.BuildRequest{Service: "Hotel/Search", Version: "1", PackageUrl: goodURL, PackageSha256: goodSHA},
			code: commonv1.Code_CODE_INVALID_ARGUMENT, msg: "DNS label", field: "service"},
		{name: "bad sha256", req: &imagev1.BuildRequest{Service: svc, Version: "7", PackageUrl: goodURL, PackageSha256: "abc"},
			code: commonv1.Code_CODE_INVALID_ARGUMENT, msg: "64 hex digits", field: "package_sha256"},
		{name: "bad base image", req: &imagev1.BuildRequest{Service: svc, Version: "8", PackageUrl: goodURL, PackageSha256: goodSHA, BaseImage: "Not An Image"},
			code: commonv1.Code_CODE_INVALID_ARGUMENT, field: "base_image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.request(tc.req)
			wantFailure(t, tc.name, err, tc.code, imagebuilder.ClassApplication, tc.msg)
			var se *natsbus.StatusError
			if errors.As(err, &se) && se.Details["field"] != tc.field {
				t.Errorf("field: got %q, want %q (%s)", se.Details["field"], tc.field, se.Message)
			}
			if imagebuilder.CheckServicePath(tc.req.GetService()) != nil {
				return
			}
			if rec := e.record(tc.req.GetService(), tc.req.GetVersion()); rec != nil {
				t.Errorf("record %v written for a failed build", rec)
			}
			if engineTag(tc.req.GetVersion()) {
				if d := e.registryDigest(tc.req.GetService(), tc.req.GetVersion()); d != "" {
					t.Errorf("registry has %s for a failed build", d)
				}
			}
		})
	}
	if got := b.counter("berth_image_builder_builds_total", map[string]string{"outcome": "ok"}); got != 0 {
		t.Errorf("successful builds: got %v, want 0", got)
	}
	if got := e.engineImages(svc); len(got) != 0 {
		t.Errorf("engine images of %s: got %v, want none", svc, got)
	}
	failed := 0
	for _, ev := range e.events(svc) {
		if ev.typ == imagebuilder.EventFailed {
			failed++
			if ev.ev.GetFailureClass() != imagebuilder.ClassApplication || ev.ev.GetMessage() == "" {
				t.Errorf("failed event %v: want class application and a message", ev.ev)
			}
		}
	}
	if failed != 6 {
		t.Errorf("image.failed events of %s: got %d, want 6", svc, failed)
	}
}

// engineTag reports whether v can be looked up as a tag.
func engineTag(v string) bool { return !strings.ContainsAny(v, "+/ ") }

// TestRegistryDown asks while the registry is down: the request fails as infrastructure
// (UNAVAILABLE) and nothing is recorded; a work-queue request is retried until the
// registry is back, and then built.
func TestRegistryDown(t *testing.T) {
	e := newEnv(t)
	b, _ := e.startBuilder("b1", nil)
	svc := e.service("regdown")
	url, sha := e.writePackage(append([]pkgFile{descriptorFor(svc)}, appFiles...)...)
	req := &imagev1.BuildRequest{Service: svc, Version: "1", PackageUrl: url, PackageSha256: sha}
	e.reg.Stop()
	_, err := e.request(req)
	wantFailure(t, "registry down", err, commonv1.Code_CODE_UNAVAILABLE, imagebuilder.ClassInfrastructure, e.reg.Addr)
	if rec := e.record(svc, "1"); rec != nil {
		t.Errorf("record %v written while the registry was down", rec)
	}

	if err := e.bus.PublishWork(t.Context(), subjects.WorkBuild, req, natsbus.WithID("regdown-1")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for b.counter("berth_image_builder_requests_total", map[string]string{"source": "work", "outcome": "infrastructure"}) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the work request was not retried while the registry was down")
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.reg.Start()
	built := e.waitEvent(svc, imagebuilder.EventBuilt, time.Minute)
	if rec := e.record(svc, "1"); rec.GetDigest() != built.GetDigest() || e.registryDigest(svc, "1") != built.GetDigest() {
		t.Errorf("after the registry came back: record %v, event digest %s, registry %s", rec, built.GetDigest(), e.registryDigest(svc, "1"))
	}
}

// TestEngineDown loses the Docker engine under a running builder (its socket is a proxy
// the test closes): the build fails as infrastructure and nothing is recorded.
func TestEngineDown(t *testing.T) {
	e := newEnv(t)
	proxy := newSocketProxy(t)
	b, _ := e.startBuilder("b1", func(c *imagebuilder.Config) { c.DockerHost = "unix://" + proxy.path })
	svc := e.service("enginedown")
	url, sha := e.writePackage(append([]pkgFile{descriptorFor(svc)}, appFiles...)...)
	proxy.close()
	_, err := e.request(&imagev1.BuildRequest{Service: svc, Version: "1", PackageUrl: url, PackageSha256: sha})
	wantFailure(t, "engine down", err, commonv1.Code_CODE_UNAVAILABLE, imagebuilder.ClassInfrastructure, "Docker engine")
	if rec := e.record(svc, "1"); rec != nil {
		t.Errorf("record %v written while the engine was down", rec)
	}
	if d := e.registryDigest(svc, "1"); d != "" {
		t.Errorf("registry has %s", d)
	}
	if got := b.counter("berth_image_builder_builds_total", map[string]string{"outcome": "infrastructure"}); got != 1 {
		t.Errorf("infrastructure build failures: got %v, want 1", got)
	}
}

// socketProxy forwards a unix socket to the Docker engine's until closed.
type socketProxy struct {
	path string
	l    net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn []net.Conn
}

func newSocketProxy(t *testing.T) *socketProxy {
	t.Helper()
	target := "/var/run/docker.sock"
	if h := os.Getenv("DOCKER_HOST"); strings.HasPrefix(h, "unix://") {
		target = strings.TrimPrefix(h, "unix://")
	} else if h != "" {
		t.Skipf("DOCKER_HOST %s is not a unix socket", h)
	}
	p := &socketProxy{path: filepath.Join(t.TempDir(), "docker.sock")}
	l, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.l = l
	p.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conn = append(p.conn, c, up)
			p.mu.Unlock()
			p.wg.Go(func() { _, _ = io.Copy(up, c); up.Close() })
			p.wg.Go(func() { _, _ = io.Copy(c, up); c.Close() })
		}
	})
	t.Cleanup(p.close)
	return p
}

// close stops accepting, cuts every forwarded connection and waits for the copies.
func (p *socketProxy) close() {
	p.l.Close()
	p.mu.Lock()
	for _, c := range p.conn {
		c.Close()
	}
	p.conn = nil
	p.mu.Unlock()
	p.wg.Wait()
}
