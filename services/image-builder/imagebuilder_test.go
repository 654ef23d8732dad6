package imagebuilder_test

import (
	"context"
	"crypto/rand"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	imagebuilder "github.com/berthdev/berth/services/image-builder"
	"github.com/berthdev/berth/services/image-builder/registrytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		tweak func(*imagebuilder.Config)
		want  string
	}{
		{func(c *imagebuilder.Config) {}, ""},
		{func(c *imagebuilder.Config) { c.Name = "" }, "name"},
		{func(c *imagebuilder.Config) { c.Registry = "" }, "registry"},
		{func(c *imagebuilder.Config) { c.Registry = "http://r:5000" }, "registry"},
		{func(c *imagebuilder.Config) { c.RegistryScheme = "ftp" }, "registry_scheme"},
		{func(c *imagebuilder.Config) { c.RegistryPassword = "p" }, "registry_password"},
		{func(c *imagebuilder.Config) { c.DefaultBaseImage = "Bad Image" }, "default_base_image"},
		{func(c *imagebuilder.Config) { c.ImageLabels = []string{"novalue"} }, "image_labels"},
		{func(c *imagebuilder.Config) { c.ImageLabels = []string{"dev.berth.service=x"} }, "image_labels"},
		{func(c *imagebuilder.Config) { c.Builds = 0 }, "builds"},
		{func(c *imagebuilder.Config) { c.Concurrency = 0 }, "concurrency"},
		{func(c *imagebuilder.Config) { c.BuildTimeout = 0 }, "build_timeout"},
		{func(c *imagebuilder.Config) { c.LockTTL = 0 }, "lock_ttl"},
		{func(c *imagebuilder.Config) { c.MaxDeliver = 0 }, "max_deliver"},
		{func(c *imagebuilder.Config) { c.LogTail = 0 }, "log_tail"},
		{func(c *imagebuilder.Config) { c.ConfirmTTL = -time.Second }, "confirm_ttl"},
		{func(c *imagebuilder.Config) { c.WorkConsumer = "a.b" }, "work_consumer"},
		{func(c *imagebuilder.Config) { c.Coord = "nohost" }, "coord"},
		{func(c *imagebuilder.Config) { c.ListenMetrics = "nohost" }, "listen_metrics"},
		{func(c *imagebuilder.Config) { c.WorkDir = "" }, "work_dir"},
	} {
		cfg := imagebuilder.DefaultConfig()
		tc.tweak(&cfg)
		err := cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("Validate: got %v, want nil", err)
		case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
			t.Errorf("Validate: got %v, want an error naming %s", err, tc.want)
		}
	}
}

func TestConfigRegistryScheme(t *testing.T) {
	for _, tc := range []struct {
		registry, scheme string
		insecure         bool
	}{
		{"127.0.0.1:5000", "", true},
		{"localhost:5000", "", true},
		{"[::1]:5000", "", true},
		{"registry.example.com", "", false},
		{"10.0.0.5:5000", "", false},
		{"10.0.0.5:5000", "http", true},
		{"127.0.0.1:5000", "https", false},
	} {
		cfg := imagebuilder.DefaultConfig()
		cfg.Registry, cfg.RegistryScheme = tc.registry, tc.scheme
		if got := cfg.RegistryInsecure(); got != tc.insecure {
			t.Errorf("RegistryInsecure(%s, %q) = %v, want %v", tc.registry, tc.scheme, got, tc.insecure)
		}
	}
	cfg := imagebuilder.DefaultConfig()
	if got, want := cfg.BaseImage(), "127.0.0.1:5000/berth/base:busybox"; got != want {
		t.Errorf("BaseImage() = %q, want %q", got, want)
	}
}

func TestCheckServicePath(t *testing.T) {
	for in, ok := range map[string]bool{
		"hotel/search": true, "a": true, "a-1/b2": true, "a/b/c/d/e/f/g/h": true,
		"": false, "/a": false, "a/": false, "Hotel": false, "a/-b": false, "a/b/c/d/e/f/g/h/i": false, "a.b": false,
	} {
		if err := imagebuilder.CheckServicePath(in); (err == nil) != ok {
			t.Errorf("CheckServicePath(%q) = %v, want ok %v", in, err, ok)
		}
	}
}

// TestRunWithoutEngine checks that Run says clearly that there is no Docker engine,
// before it needs NATS or coord.
func TestRunWithoutEngine(t *testing.T) {
	cfg := imagebuilder.DefaultConfig()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	cfg.DockerHost, cfg.WorkDir, cfg.ListenMetrics = "unix://"+sock, t.TempDir(), ""
	b, err := imagebuilder.New(cfg, imagebuilder.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CheckEngine(t.Context()); !errors.Is(err, imagebuilder.ErrEngineUnavailable) || !strings.Contains(err.Error(), sock) {
		t.Errorf("CheckEngine: got %v, want ErrEngineUnavailable naming %s", err, sock)
	}
	if err := b.Run(t.Context()); !errors.Is(err, imagebuilder.ErrEngineUnavailable) {
		t.Errorf("Run: got %v, want ErrEngineUnavailable", err)
	}
	if _, err := b.Build(t.Context(), nil); !errors.Is(err, imagebuilder.ErrNotRunning) {
		t.Errorf("Build before Run: got %v, want ErrNotRunning", err)
	}
}

// TestMakeBaseImage makes a base image from scratch and the machine's static busybox,
// pushes it to a registry on loopback, and runs a shell in it.
func TestMakeBaseImage(t *testing.T) {
	registrytest.RequireDocker(t)
	reg := registrytest.Run(t)
	run := strings.ToLower(rand.Text()[:10])
	label := "dev.berth.test=" + run
	t.Cleanup(func() { cleanup(t, label) })
	var lines []string
	res, err := imagebuilder.MakeBaseImage(t.Context(), imagebuilder.BaseOptions{Name: "berth-test/base:" + run, Registry: reg.Addr,
		Labels: map[string]string{"dev.berth.test": run}, Log: func(l string) { lines = append(lines, l) }})
	if err != nil {
		t.Fatalf("MakeBaseImage: %v\n%s", err, strings.Join(lines, "\n"))
	}
	if want := reg.Addr + "/berth-test/base:" + run; res.Reference != want || !strings.HasPrefix(res.Digest, "sha256:") || res.Applets < 50 {
		t.Errorf("got %+v, want reference %s, a digest and the applets", res, want)
	}
	out, err := exec.Command("docker", "run", "--rm", "--label", label, "--network", "none", res.Reference,
		"sh", "-c", "echo hello from $(basename $0); ls /tmp >/dev/null && id -un && env | grep -c PATH").CombinedOutput()
	if err != nil {
		t.Fatalf("run a shell in %s: %v\n%s", res.Reference, err, out)
	}
	if got, want := string(out), "hello from sh\nroot\n1\n"; got != want {
		t.Errorf("shell output %q, want %q", got, want)
	}
}

func TestMakeBaseImageRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts imagebuilder.BaseOptions
		want string
	}{
		{"dynamic busybox", imagebuilder.BaseOptions{Busybox: "/bin/ls"}, "statically linked"},
		{"missing busybox", imagebuilder.BaseOptions{Busybox: filepath.Join(t.TempDir(), "busybox")}, "busybox-static"},
		{"bad name", imagebuilder.BaseOptions{Name: "Bad Name"}, "base image name"},
		{"name with a registry", imagebuilder.BaseOptions{Name: "other.example:5000/base:1", Registry: "127.0.0.1:5000"}, "registry of its own"},
		{"bad registry", imagebuilder.BaseOptions{Registry: "http://r"}, "registry"},
	} {
		_, err := imagebuilder.MakeBaseImage(t.Context(), tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// cleanup removes the containers and images carrying label.
func cleanup(t *testing.T, label string) {
	t.Helper()
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
