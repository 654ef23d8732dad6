// Package images_test runs berth-image-builder against the real parts: the machine's Docker
// engine, a Docker registry on loopback (Debian docker-registry), one berth-coord member
// and a NATS server with JetStream, both in process. Base images are made from scratch
// and the machine's static busybox; packages are .tar.gz files served from file:// URLs.
// Every image and container a test makes carries the label dev.berth.test=<run> and is
// removed by it at the end.
//
// The tests skip when there is no Docker engine or no docker-registry binary.
package images_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	imagev1 "github.com/berthdev/berth/proto/image/v1"
	"github.com/berthdev/berth/proto/subjects"
	coordsrv "github.com/berthdev/berth/services/coord"
	imagebuilder "github.com/berthdev/berth/services/image-builder"
	"github.com/berthdev/berth/services/image-builder/registrytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logger is quiet unless BERTH_TEST_LOG is set.
func logger() *slog.Logger {
	if os.Getenv("BERTH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// env is a registry with a base image, one coord member and one NATS server.
type env struct {
	t   *testing.T
	run string
	// label marks everything the test makes in the engine.
	label     string
	reg       *registrytest.Registry
	base      string
	coordAddr string
	natsURL   string
	coord     *coordclient.Client
	bus       *natsbus.Bus
}

func newEnv(t *testing.T) *env {
	t.Helper()
	registrytest.RequireDocker(t)
	e := &env{t: t, run: strings.ToLower(rand.Text()[:10])}
	e.label = "dev.berth.test=" + e.run
	e.reg = registrytest.Run(t)
	t.Cleanup(func() { cleanupEngine(t, e.label) })
	res, err := imagebuilder.MakeBaseImage(t.Context(), imagebuilder.BaseOptions{Name: "berth-test/base:" + e.run, Registry: e.reg.Addr,
		Labels: map[string]string{"dev.berth.test": e.run}})
	if err != nil {
		t.Fatalf("make the base image: %v", err)
	}
	e.base = res.Reference

	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := coordsrv.New(coordsrv.Config{Name: "c1", DataDir: filepath.Join(t.TempDir(), "coord"), ClientListener: cl, PeerListener: pl,
		InitialCluster: "c1=" + pl.Addr().String(), HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
		RequestTimeout: 5 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("coord: %v", err)
		}
	})
	e.coordAddr = cl.Addr().String()
	e.coord = e.newCoord()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.coord.Put(t.Context(), "/probe", nil); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("coord has no leader: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ns := natstest.RunServer(t)
	e.natsURL = ns.URL()
	e.bus = e.newBus("test")
	if err := e.bus.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	return e
}

// newCoord is a coord client of its own, closed when the test ends.
func (e *env) newCoord() *coordclient.Client {
	c, err := coordclient.New(context.Background(), coordclient.Config{Endpoints: []string{e.coordAddr}, RequestTimeout: 10 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// newBus is a NATS connection of its own, closed when the test ends.
func (e *env) newBus(name string) *natsbus.Bus {
	b, err := natsbus.Connect(context.Background(), natsbus.Config{URLs: []string{e.natsURL}, Name: name, Source: name})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

// replica is a running builder and its metrics.
type replica struct {
	*imagebuilder.Builder
	reg *prometheus.Registry
}

// startBuilder runs a builder replica with its own coord client, bus and metrics, and
// stops it when the test ends (or when the returned function is called).
func (e *env) startBuilder(name string, tweak func(*imagebuilder.Config)) (*replica, func()) {
	e.t.Helper()
	cfg := imagebuilder.DefaultConfig()
	cfg.Name, cfg.ListenMetrics, cfg.Registry, cfg.WorkDir = name, "", e.reg.Addr, e.t.TempDir()
	cfg.DefaultBaseImage = e.base
	cfg.ImageLabels = []string{"dev.berth.test=" + e.run}
	cfg.RetryDelay = 300 * time.Millisecond
	cfg.LockTTL = 2 * time.Second
	if tweak != nil {
		tweak(&cfg)
	}
	reg := prometheus.NewRegistry()
	b, err := imagebuilder.New(cfg, imagebuilder.Deps{Bus: e.newBus("berth-image-builder/" + name), Coord: e.newCoord(),
		Logger: logger().With("replica", name), Registerer: reg})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("builder %s: %v", name, err)
			}
		})
	}
	e.t.Cleanup(stop)
	deadline := time.Now().Add(10 * time.Second)
	for !b.Ready() {
		select {
		case err := <-done:
			e.t.Fatalf("builder %s stopped at start: %v", name, err)
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("builder %s not ready", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &replica{Builder: b, reg: reg}, stop
}

// counter is the value of a counter of the replica's registry with the given labels.
func (r *replica) counter(name string, labels map[string]string) float64 {
	mfs, err := r.reg.Gather()
	if err != nil {
		panic(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

// builds is berth_image_builder_builds_total of the replica, every outcome.
func (r *replica) builds() float64 { return r.counter("berth_image_builder_builds_total", nil) }

// pkgFile is one file of a test package.
type pkgFile struct {
	name string
	mode int64
	data string
}

// descriptorFor is a valid berth.yaml for service.
func descriptorFor(service string) pkgFile {
	return pkgFile{"berth.yaml", 0o644, "service: " + service + "\nport: 8080\nscripts:\n  start: bin/start.sh\n  stop: bin/stop.sh\n"}
}

// appFiles are a package's scripts.
var appFiles = []pkgFile{
	{"bin/start.sh", 0o755, "#!/bin/sh\necho started\n"},
	{"bin/stop.sh", 0o755, "#!/bin/sh\necho stopped\n"},
}

// writePackage writes a .tar.gz of files and returns its file:// URL and sha256.
func (e *env) writePackage(files ...pkgFile) (string, string) {
	e.t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg, ModTime: time.Unix(1, 0)}); err != nil {
			e.t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.data)); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		e.t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		e.t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	path := filepath.Join(e.t.TempDir(), "pkg.tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return "file://" + path, hex.EncodeToString(sum[:])
}

// service is a service path unique to this run.
func (e *env) service(name string) string { return "berth-test/r" + e.run + "/" + name }

// request asks for an image over NATS request/reply.
func (e *env) request(req *imagev1.BuildRequest) (*imagev1.BuildReply, error) {
	ctx, cancel := context.WithTimeout(e.t.Context(), 2*time.Minute)
	defer cancel()
	reply := &imagev1.BuildReply{}
	if err := e.bus.Request(ctx, subjects.RPCBuild, req, reply); err != nil {
		return nil, err
	}
	return reply, nil
}

// record reads the ImageRecord of service version; nil when there is none.
func (e *env) record(service, version string) *imagev1.ImageRecord {
	e.t.Helper()
	n, err := e.coord.Get(e.t.Context(), imagebuilder.ImagesPrefix+"/"+service+"/"+version)
	if err != nil {
		if !errors.Is(err, coordclient.ErrNotFound) {
			e.t.Fatal(err)
		}
		return nil
	}
	rec := &imagev1.ImageRecord{}
	if err := protojson.Unmarshal(n.Value, rec); err != nil {
		e.t.Fatal(err)
	}
	return rec
}

// registryDigest is the digest the registry has for service:version, "" when none.
func (e *env) registryDigest(service, version string) string {
	e.t.Helper()
	req, _ := http.NewRequestWithContext(e.t.Context(), http.MethodHead, "http://"+e.reg.Addr+"/v2/"+service+"/manifests/"+version, nil)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return ""
	}
	return resp.Header.Get("Docker-Content-Digest")
}

// deleteTag deletes service:version from the registry.
func (e *env) deleteTag(service, version string) {
	e.t.Helper()
	d := e.registryDigest(service, version)
	if d == "" {
		e.t.Fatalf("registry has no %s:%s to delete", service, version)
	}
	req, _ := http.NewRequestWithContext(e.t.Context(), http.MethodDelete, "http://"+e.reg.Addr+"/v2/"+service+"/manifests/"+d, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		e.t.Fatalf("delete %s:%s: %s", service, version, resp.Status)
	}
}

// engineImages lists the ids of the images the engine has for service (by label).
func (e *env) engineImages(service string) []string {
	e.t.Helper()
	out, err := exec.Command("docker", "images", "-q", "--no-trunc", "--filter", "label="+e.label, "--filter", "label=dev.berth.service="+service).Output()
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.Fields(string(out))
}

// imageEvent is an image event as the tests look at it.
type imageEvent struct {
	typ string
	ev  *eventsv1.ImageEvent
}

// events reads the image events of service stored so far.
func (e *env) events(service string) []imageEvent {
	e.t.Helper()
	tokens, err := subjects.ServiceTokens(service)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []imageEvent
	err = e.bus.ConsumeEvents(e.t.Context(), natsbus.EventConsumerConfig{FilterSubjects: []string{"berth.v1.events.image.*." + tokens},
		StopWhenCaughtUp: true}, func(_ context.Context, d natsbus.EventDelivery) error {
		ev := &eventsv1.ImageEvent{}
		if err := natsbus.UnmarshalEventData(d.Event, ev); err != nil {
			return err
		}
		out = append(out, imageEvent{typ: strings.TrimPrefix(d.Event.Type, "dev.berth.image."), ev: ev})
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// waitEvent waits until service has an event of type typ and returns it.
func (e *env) waitEvent(service, typ string, timeout time.Duration) *eventsv1.ImageEvent {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, ev := range e.events(service) {
			if ev.typ == typ {
				return ev.ev
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no image.%s event for %s within %s; have %v", typ, service, timeout, e.eventTypes(service))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *env) eventTypes(service string) []string {
	var out []string
	for _, ev := range e.events(service) {
		out = append(out, ev.typ)
	}
	return out
}

// cleanupEngine removes the containers and images carrying label.
func cleanupEngine(t *testing.T, label string) {
	ctx := context.Background()
	if out, err := exec.CommandContext(ctx, "docker", "ps", "-aq", "--filter", "label="+label).Output(); err == nil {
		for id := range strings.FieldsSeq(string(out)) {
			_ = exec.CommandContext(ctx, "docker", "rm", "-f", id).Run()
		}
	}
	out, err := exec.CommandContext(ctx, "docker", "images", "-q", "--filter", "label="+label).Output()
	if err != nil {
		t.Errorf("list images %s: %v", label, err)
		return
	}
	for id := range strings.FieldsSeq(string(out)) {
		if out, err := exec.CommandContext(ctx, "docker", "rmi", "-f", id).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such image") {
			t.Errorf("remove image %s: %v: %s", id, err, out)
		}
	}
}
