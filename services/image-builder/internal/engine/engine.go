// Package engine is the image builder's only user of the Docker Engine API client
// (github.com/moby/moby/client, whose API churns between releases): it offers the rest of
// the service the few calls it needs — ping, inspect, pull, build, push, list and remove —
// and turns the engine's answers into the sentinels below, so that callers classify
// failures with errors.Is and never read the engine's messages.
//
// Builds use the classic builder (API /build, builder version 1), which takes the build
// context as a tar stream and needs no session; the engines Berth targets all have it.
package engine

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/build"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
)

// Error classes. Every error of the package about the engine or a registry wraps one.
var (
	// ErrUnavailable is an engine that cannot be reached: the socket is missing, the daemon
	// is down or does not answer.
	ErrUnavailable = errors.New("engine: docker engine unreachable")
	// ErrNotFound is an image that is not on the engine and that its registry does not
	// have (or will not admit having: pull access denied).
	ErrNotFound = errors.New("engine: image not found")
	// ErrRegistryUnavailable is a registry the engine could not reach or that failed while
	// pulling or pushing.
	ErrRegistryUnavailable = errors.New("engine: registry unavailable")
	// ErrDenied is a registry that refused the credentials.
	ErrDenied = errors.New("engine: registry denied access")
	// ErrBuild is a build the engine ran and that failed; the message is the engine's.
	ErrBuild = errors.New("engine: build failed")
	// ErrBadReference is an image reference that does not parse.
	ErrBadReference = errors.New("engine: bad image reference")
)

// Engine is a client of one Docker engine. It is safe for concurrent use and starts no
// goroutines of its own.
type Engine struct {
	c    *client.Client
	host string
}

// New makes a client of the engine at host (unix:///var/run/docker.sock,
// tcp://127.0.0.1:2375); empty means $DOCKER_HOST, else the platform's default socket. It
// contacts nothing: Ping does.
func New(host string) (*Engine, error) {
	opts := []client.Opt{client.FromEnv}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	c, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker engine client %q: %w", host, err)
	}
	return &Engine{c: c, host: c.DaemonHost()}, nil
}

// Host is the engine's address.
func (e *Engine) Host() string { return e.host }

// Close releases the client's idle connections.
func (e *Engine) Close() error { return e.c.Close() }

// wrap classifies an error of an API call: a connection failure is ErrUnavailable;
// anything else keeps its own error, with the operation named.
func (e *Engine) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if client.IsErrConnectionFailed(err) {
		return fmt.Errorf("%s: %w at %s: %w", op, ErrUnavailable, e.host, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Ping checks that the engine answers; the error wraps ErrUnavailable when it does not.
func (e *Engine) Ping(ctx context.Context) error {
	if _, err := e.c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		if client.IsErrConnectionFailed(err) || !cerrdefs.IsInvalidArgument(err) {
			return fmt.Errorf("ping docker engine: %w at %s: %w", ErrUnavailable, e.host, err)
		}
		return fmt.Errorf("ping docker engine at %s: %w", e.host, err)
	}
	return nil
}

// Image is an image on the engine.
type Image struct {
	// ID is the image id (sha256:...).
	ID string
	// Tags are its repository:tag references.
	Tags []string
	// Labels are its labels.
	Labels map[string]string
	// RepoDigests are its registry digests (name@sha256:...).
	RepoDigests []string
}

// Inspect returns the image ref (a reference or an id); the error wraps ErrNotFound when
// the engine does not have it.
func (e *Engine) Inspect(ctx context.Context, ref string) (*Image, error) {
	res, err := e.c.ImageInspect(ctx, ref)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil, fmt.Errorf("inspect image %s: %w", ref, ErrNotFound)
		}
		return nil, e.wrap("inspect image "+ref, err)
	}
	img := &Image{ID: res.ID, Tags: res.RepoTags, RepoDigests: res.RepoDigests}
	if res.Config != nil {
		img.Labels = res.Config.Labels
	}
	return img, nil
}

// EnsureImage makes ref present on the engine: it is there already, or it is pulled with
// the encoded registry credentials auth (see EncodeAuth). It reports whether it pulled.
// A registry without the image (or refusing to say) is ErrNotFound; a registry that
// cannot be reached is ErrRegistryUnavailable; an engine that cannot be reached is
// ErrUnavailable.
func (e *Engine) EnsureImage(ctx context.Context, ref, auth string) (pulled bool, err error) {
	if _, err := ParseReference(ref); err != nil {
		return false, err
	}
	_, err = e.Inspect(ctx, ref)
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return false, err
	}
	return true, e.Pull(ctx, ref, auth)
}

// Pull pulls ref; errors as EnsureImage's.
func (e *Engine) Pull(ctx context.Context, ref, auth string) error {
	resp, err := e.c.ImagePull(ctx, ref, client.ImagePullOptions{RegistryAuth: auth})
	if err == nil {
		err = resp.Wait(ctx)
	}
	if err == nil {
		return nil
	}
	return e.registryError("pull "+ref, err)
}

// registryError classifies the failure of a pull or a push. The engine reports a missing
// image or repository as not found (pull access denied included), refused credentials as
// unauthorized or forbidden, and anything else the registry did — unreachable, a 5xx — as
// a system error, which is an unavailable registry.
func (e *Engine) registryError(op string, err error) error {
	switch {
	case client.IsErrConnectionFailed(err):
		return e.wrap(op, err)
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("%s: %w: %w", op, ErrNotFound, err)
	case cerrdefs.IsUnauthorized(err), cerrdefs.IsPermissionDenied(err):
		return fmt.Errorf("%s: %w: %w", op, ErrDenied, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w: %w", op, ErrRegistryUnavailable, err)
}

// BuildOptions describe one build.
type BuildOptions struct {
	// Tag is the reference the built image gets.
	Tag string
	// Labels are set on the image besides the Dockerfile's LABELs.
	Labels map[string]string
	// NoCache makes every step run again instead of reusing the engine's layer cache.
	NoCache bool
	// Log receives each line of the build's output; nil drops them.
	Log func(line string)
}

// Build builds the Dockerfile at the root of the tar stream buildContext and returns the
// image id. A build that the engine ran and that failed wraps ErrBuild with the engine's
// message (its output went to Log); an engine that cannot be reached is ErrUnavailable.
// Build reads buildContext to its end or until it fails; the caller closes it.
func (e *Engine) Build(ctx context.Context, buildContext io.Reader, opts BuildOptions) (string, error) {
	if _, err := ParseReference(opts.Tag); err != nil {
		return "", err
	}
	res, err := e.c.ImageBuild(ctx, buildContext, client.ImageBuildOptions{
		Tags:        []string{opts.Tag},
		Remove:      true,
		ForceRemove: true,
		NoCache:     opts.NoCache,
		Labels:      opts.Labels,
		Version:     build.BuilderV1,
	})
	if err != nil {
		if client.IsErrConnectionFailed(err) {
			return "", e.wrap("build "+opts.Tag, err)
		}
		return "", fmt.Errorf("build %s: %w: %w", opts.Tag, ErrBuild, err)
	}
	defer res.Body.Close()
	var id string
	err = stream(ctx, res.Body, opts.Log, func(aux json.RawMessage) {
		var a struct{ ID string }
		if json.Unmarshal(aux, &a) == nil && a.ID != "" {
			id = a.ID
		}
	})
	if err != nil {
		var je *jsonstream.Error
		if errors.As(err, &je) {
			return "", fmt.Errorf("build %s: %w: %s", opts.Tag, ErrBuild, je.Message)
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("build %s: %w", opts.Tag, ctx.Err())
		}
		return "", e.wrap("build "+opts.Tag, fmt.Errorf("read build output: %w", err))
	}
	if id == "" {
		// Engines that send no aux message still tagged the image.
		img, err := e.Inspect(ctx, opts.Tag)
		if err != nil {
			return "", fmt.Errorf("build %s: find the built image: %w", opts.Tag, err)
		}
		id = img.ID
	}
	return id, nil
}

// Push pushes ref to its registry with the encoded credentials auth and returns the
// manifest digest the registry stored (sha256:...). A registry that cannot be reached or
// fails is ErrRegistryUnavailable; refused credentials are ErrDenied; an image the engine
// does not have is ErrNotFound.
func (e *Engine) Push(ctx context.Context, ref, auth string, log func(string)) (string, error) {
	if _, err := ParseReference(ref); err != nil {
		return "", err
	}
	// The engine reports a missing image only as text in the push's stream; ask first.
	if _, err := e.Inspect(ctx, ref); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	if auth == "" {
		// Engines before API 1.48 read the credentials from the body when the header is
		// missing, and fail on an empty body: send empty credentials explicitly.
		auth = EncodeAuth("", "")
	}
	resp, err := e.c.ImagePush(ctx, ref, client.ImagePushOptions{RegistryAuth: auth})
	if err != nil {
		return "", e.registryError("push "+ref, err)
	}
	defer resp.Close()
	var digest string
	err = stream(ctx, resp, log, func(aux json.RawMessage) {
		var a struct{ Digest string }
		if json.Unmarshal(aux, &a) == nil && a.Digest != "" {
			digest = a.Digest
		}
	})
	if err != nil {
		var je *jsonstream.Error
		if errors.As(err, &je) {
			switch je.Code {
			case 401, 403:
				return "", fmt.Errorf("push %s: %w: %s", ref, ErrDenied, je.Message)
			case 404:
				return "", fmt.Errorf("push %s: %w: %s", ref, ErrNotFound, je.Message)
			}
			return "", fmt.Errorf("push %s: %w: %s", ref, ErrRegistryUnavailable, je.Message)
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("push %s: %w", ref, ctx.Err())
		}
		return "", e.wrap("push "+ref, fmt.Errorf("read push output: %w", err))
	}
	if digest == "" {
		return "", fmt.Errorf("push %s: %w: the engine reported no digest", ref, ErrRegistryUnavailable)
	}
	return digest, nil
}

// stream reads the engine's JSON message stream: text lines go to log, aux payloads to
// aux, and the first error message ends it as a *jsonstream.Error.
func stream(ctx context.Context, r io.Reader, log func(string), aux func(json.RawMessage)) error {
	stop := context.AfterFunc(ctx, func() {
		if c, ok := r.(io.Closer); ok {
			_ = c.Close()
		}
	})
	defer stop()
	dec := json.NewDecoder(r)
	var partial string
	emit := func(s string) {
		if log == nil {
			return
		}
		s = partial + s
		partial = ""
		for {
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				partial = s
				return
			}
			if line := strings.TrimRight(s[:i], "\r"); strings.TrimSpace(line) != "" {
				log(line)
			}
			s = s[i+1:]
		}
	}
	for {
		var m jsonstream.Message
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				emit("\n")
				return nil
			}
			return err
		}
		if m.Error != nil {
			emit("\n")
			if log != nil && m.Error.Message != "" {
				log("ERROR: " + m.Error.Message)
			}
			return m.Error
		}
		if m.Stream != "" {
			emit(m.Stream)
		}
		if m.Status != "" && m.Progress == nil {
			line := m.Status
			if m.ID != "" {
				line = m.ID + ": " + line
			}
			emit(line + "\n")
		}
		if m.Aux != nil && aux != nil {
			aux(*m.Aux)
		}
	}
}

// List returns the images that carry the label (key or key=value).
func (e *Engine) List(ctx context.Context, label string) ([]Image, error) {
	res, err := e.c.ImageList(ctx, client.ImageListOptions{Filters: make(client.Filters).Add("label", label)})
	if err != nil {
		return nil, e.wrap("list images "+label, err)
	}
	out := make([]Image, 0, len(res.Items))
	for _, s := range res.Items {
		out = append(out, Image{ID: s.ID, Tags: s.RepoTags, Labels: s.Labels, RepoDigests: s.RepoDigests})
	}
	return out, nil
}

// Remove deletes an image (an id or a reference) with all its tags; a missing image is
// not an error.
func (e *Engine) Remove(ctx context.Context, ref string) error {
	_, err := e.c.ImageRemove(ctx, ref, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return e.wrap("remove image "+ref, err)
	}
	return nil
}

// RemoveLabelled deletes every image carrying the label and returns how many it removed.
func (e *Engine) RemoveLabelled(ctx context.Context, label string) (int, error) {
	imgs, err := e.List(ctx, label)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, img := range imgs {
		if err := e.Remove(ctx, img.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// EncodeAuth encodes registry credentials for the X-Registry-Auth header; empty user and
// password make the empty credentials a registry without authentication takes.
func EncodeAuth(user, password string) string {
	buf, _ := json.Marshal(registry.AuthConfig{Username: user, Password: password})
	return base64.URLEncoding.EncodeToString(buf)
}

// tagRE is a valid image tag.
var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// ValidTag reports whether s can be an image tag.
func ValidTag(s string) bool { return tagRE.MatchString(s) }

// Reference is a parsed image reference.
type Reference struct {
	// Domain is the registry's host[:port] ("docker.io" for a reference without one).
	Domain string
	// Path is the repository inside the registry (berth/base, hotel/search).
	Path string
	// Tag is the tag, "latest" when the reference has neither tag nor digest.
	Tag string
	// Digest is the digest, when the reference has one.
	Digest string
}

// ParseReference parses an image reference the way the engine does (a reference without
// a registry is on Docker Hub); the error wraps ErrBadReference.
func ParseReference(ref string) (Reference, error) {
	n, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return Reference{}, fmt.Errorf("%w %q: %w", ErrBadReference, ref, err)
	}
	r := Reference{Domain: reference.Domain(n), Path: reference.Path(n)}
	if d, ok := n.(reference.Digested); ok {
		r.Digest = d.Digest().String()
	}
	if t, ok := reference.TagNameOnly(n).(reference.Tagged); ok && r.Digest == "" {
		r.Tag = t.Tag()
	} else if t, ok := n.(reference.Tagged); ok {
		r.Tag = t.Tag()
	}
	return r, nil
}
