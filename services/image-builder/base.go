package imagebuilder

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/berthdev/berth/services/image-builder/internal/buildctx"
	"github.com/berthdev/berth/services/image-builder/internal/engine"
)

// LabelBaseImage marks the base images MakeBaseImage makes.
const LabelBaseImage = "dev.berth.base-image"

// DefaultBusybox is where Debian's busybox-static installs its binary.
const DefaultBusybox = "/bin/busybox"

// BaseOptions describe a base image made locally, for engines that have no registry to
// pull one from: scratch plus a static busybox with its applet links.
type BaseOptions struct {
	// Name is the image's repository:tag (DefaultBaseName when empty), without a registry.
	Name string
	// Registry, when set, is where the image is tagged and pushed: <registry>/<name>.
	// Empty makes a local image only.
	Registry string
	// RegistryUsername and RegistryPassword are the registry's credentials, if it wants
	// any.
	RegistryUsername, RegistryPassword string
	// Busybox is the path of a statically linked busybox (DefaultBusybox when empty).
	Busybox string
	// DockerHost is the engine's address; empty means $DOCKER_HOST, else the default socket.
	DockerHost string
	// Labels are set on the image besides dev.berth.base-image=true.
	Labels map[string]string
	// Log receives the build's and the push's output lines; nil drops them.
	Log func(line string)
}

// BaseResult is the image MakeBaseImage made.
type BaseResult struct {
	// Reference is the image's reference ([<registry>/]<name>).
	Reference string
	// ImageID is the engine's image id.
	ImageID string
	// Digest is the manifest digest in the registry; empty when nothing was pushed.
	Digest string
	// Applets is how many applet links the image has.
	Applets int
}

// ErrNotStatic is a busybox binary that needs a dynamic loader, which a scratch image
// does not have.
var ErrNotStatic = errors.New("busybox is not statically linked")

// MakeBaseImage builds a base image from scratch with the engine API — /bin/busybox, a
// link for every applet (so /bin/sh exists), /tmp, /root, /etc/passwd and /etc/group —
// and pushes it when opts.Registry is set. The build context is a tar made here; nothing
// is pulled.
func MakeBaseImage(ctx context.Context, opts BaseOptions) (*BaseResult, error) {
	if opts.Name == "" {
		opts.Name = DefaultBaseName
	}
	if opts.Busybox == "" {
		opts.Busybox = DefaultBusybox
	}
	if strings.ContainsAny(opts.Registry, "/ @") {
		return nil, fmt.Errorf("registry %q: want host[:port]", opts.Registry)
	}
	pr, err := engine.ParseReference(opts.Name)
	if err != nil {
		return nil, fmt.Errorf("base image name: %w", err)
	}
	ref := opts.Name
	if opts.Registry != "" {
		if pr.Domain != "docker.io" || strings.HasPrefix(opts.Name, "docker.io/") {
			return nil, fmt.Errorf("base image name %q: names a registry of its own; give it without one", opts.Name)
		}
		ref = opts.Registry + "/" + opts.Name
		if _, err := engine.ParseReference(ref); err != nil {
			return nil, fmt.Errorf("base image name: %w", err)
		}
	}
	if pr.Digest != "" {
		return nil, fmt.Errorf("base image name %q: a digest cannot be built; give repository:tag", opts.Name)
	}
	if err := checkStatic(opts.Busybox); err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, opts.Busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("list the applets of %s (busybox --list-full): %w", opts.Busybox, err)
	}
	applets := buildctx.ParseApplets(out)
	labels := map[string]string{LabelBaseImage: "true"}
	for k, v := range opts.Labels {
		if err := buildctx.CheckLabel(k, v); err != nil {
			return nil, err
		}
		labels[k] = v
	}

	e, err := engine.New(opts.DockerHost)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	if err := e.Ping(ctx); err != nil {
		return nil, err
	}
	rd, wr := io.Pipe()
	werr := make(chan error, 1)
	go func() {
		err := buildctx.WriteBase(wr, buildctx.Base{Busybox: opts.Busybox, Applets: applets, Labels: labels})
		wr.CloseWithError(err)
		werr <- err
	}()
	id, err := e.Build(ctx, rd, engine.BuildOptions{Tag: ref, Log: opts.Log})
	rd.CloseWithError(errors.New("build ended"))
	if e := <-werr; e != nil {
		return nil, e
	}
	if err != nil {
		return nil, err
	}
	res := &BaseResult{Reference: ref, ImageID: id, Applets: len(applets)}
	if opts.Registry == "" {
		return res, nil
	}
	res.Digest, err = e.Push(ctx, ref, engine.EncodeAuth(opts.RegistryUsername, opts.RegistryPassword), opts.Log)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// checkStatic checks that path is an ELF executable without a program interpreter.
func checkStatic(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("busybox: %w (install busybox-static, or pass its path)", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("busybox %s: not an executable file", path)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("busybox %s: not an ELF executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("busybox %s: %w: a scratch image has no dynamic loader; install busybox-static", path, ErrNotStatic)
		}
	}
	return nil
}
