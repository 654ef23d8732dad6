package imagebuilder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/artifact"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/descriptor"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/safeextract"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	imagev1 "github.com/berthdev/berth/proto/image/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/image-builder/internal/buildctx"
	"github.com/berthdev/berth/services/image-builder/internal/engine"
	"github.com/berthdev/berth/services/image-builder/internal/registry"
)

// Failure classes as ImageEvent.failure_class and the failure_class detail of a Status
// spell them.
const (
	ClassInfrastructure = "infrastructure"
	ClassApplication    = "application"
)

// ClassName is the name of a failure class: infrastructure, application or "".
func ClassName(c imagev1.FailureClass) string {
	switch c {
	case imagev1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE:
		return ClassInfrastructure
	case imagev1.FailureClass_FAILURE_CLASS_APPLICATION:
		return ClassApplication
	}
	return ""
}

// failure is a classified failure of a request.
type failure struct {
	class imagev1.FailureClass
	code  commonv1.Code
	msg   string
	// field names the request field at fault, for CODE_INVALID_ARGUMENT.
	field string
	log   []string
	// published is set once an image.failed event reported the failure.
	published bool
}

func (f *failure) Error() string { return f.msg }

// status is the failure as it crosses the bus: the code, the message and the details
// failure_class, field (when set) and build_log (the tail, newline separated).
func (f *failure) status() *natsbus.StatusError {
	d := map[string]string{"failure_class": ClassName(f.class)}
	if f.field != "" {
		d["field"] = f.field
	}
	if len(f.log) > 0 {
		d["build_log"] = strings.Join(f.log, "\n")
	}
	return &natsbus.StatusError{Code: f.code, Message: f.msg, Details: d}
}

func infra(format string, args ...any) *failure {
	return &failure{class: imagev1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE, code: commonv1.Code_CODE_UNAVAILABLE, msg: fmt.Sprintf(format, args...)}
}

func precondition(format string, args ...any) *failure {
	return &failure{class: imagev1.FailureClass_FAILURE_CLASS_APPLICATION, code: commonv1.Code_CODE_FAILED_PRECONDITION, msg: fmt.Sprintf(format, args...)}
}

func invalid(field, format string, args ...any) *failure {
	return &failure{class: imagev1.FailureClass_FAILURE_CLASS_APPLICATION, code: commonv1.Code_CODE_INVALID_ARGUMENT, field: field,
		msg: field + ": " + fmt.Sprintf(format, args...)}
}

// request is a validated BuildRequest.
type request struct {
	service, version, url, sha, base, id string
	// ref is <registry>/<service>:<version>.
	ref string
}

func (r *request) recordPath() string { return ImagesPrefix + "/" + r.service + "/" + r.version }
func (r *request) lockPath() string   { return LocksPrefix + "/" + r.service + "/" + r.version }

var (
	labelRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// CheckServicePath checks a service path: 1 to 8 segments separated by "/", each a DNS
// label of [a-z0-9-].
func CheckServicePath(s string) error {
	segs := strings.Split(s, "/")
	if s == "" || len(segs) > 8 {
		return fmt.Errorf("service path %q: want 1 to 8 segments separated by /", s)
	}
	for _, seg := range segs {
		if !labelRE.MatchString(seg) {
			return fmt.Errorf("service path %q: segment %q is not a DNS label of [a-z0-9-]", s, seg)
		}
	}
	return nil
}

// parse validates req.
func (b *Builder) parse(req *imagev1.BuildRequest) (*request, *failure) {
	r := &request{service: req.GetService(), version: req.GetVersion(), url: req.GetPackageUrl(),
		sha: strings.ToLower(req.GetPackageSha256()), base: req.GetBaseImage(), id: req.GetRequestId()}
	if err := CheckServicePath(r.service); err != nil {
		return nil, invalid("service", "%v", err)
	}
	if !engine.ValidTag(r.version) {
		return nil, invalid("version", "%q is not an image tag: 1 to 128 characters of [A-Za-z0-9_.-], not starting with . or -", r.version)
	}
	if r.url == "" {
		return nil, invalid("package_url", "empty; want a file://, http(s):// or ftp:// URL of the package")
	}
	if !sha256RE.MatchString(r.sha) {
		return nil, invalid("package_sha256", "%q: want 64 hex digits", req.GetPackageSha256())
	}
	if r.base != "" {
		if _, err := engine.ParseReference(r.base); err != nil {
			return nil, invalid("base_image", "%v", err)
		}
	}
	if len(r.id) > 256 || strings.ContainsFunc(r.id, func(c rune) bool { return c <= ' ' || c == 0x7f }) {
		return nil, invalid("request_id", "want at most 256 printable characters without spaces")
	}
	r.ref = b.cfg.Registry + "/" + r.service + ":" + r.version
	return r, nil
}

// resolve answers one request: from the cache when the image exists, else by building
// it (or waiting for the build in progress).
func (b *Builder) resolve(ctx context.Context, req *imagev1.BuildRequest) (*imagev1.BuildReply, *failure) {
	r, f := b.parse(req)
	if f != nil {
		return nil, f
	}
	reply, f := b.decide(ctx, r)
	if f != nil || reply != nil {
		return reply, f
	}
	return b.buildShared(ctx, r)
}

var unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}

// readRecord reads the ImageRecord of r; nil when there is none.
func (b *Builder) readRecord(ctx context.Context, r *request) (*imagev1.ImageRecord, *failure) {
	n, err := b.coord.Get(ctx, r.recordPath())
	if errors.Is(err, coordclient.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, coordFailure("read "+r.recordPath(), err)
	}
	rec := &imagev1.ImageRecord{}
	if err := unmarshal.Unmarshal(n.Value, rec); err != nil || rec.GetDigest() == "" {
		// A record nobody can read is as good as none: build again and overwrite it.
		b.log.Warn("unreadable image record ignored", "path", r.recordPath(), "err", err)
		return nil, nil
	}
	return rec, nil
}

func coordFailure(op string, err error) *failure {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return infra("%s: %v", op, err)
	}
	return infra("%s: coord unavailable: %v", op, err)
}

// immutable is the failure of a version whose image was built from another package.
func immutable(r *request, had string) *failure {
	if had == "" {
		had = "an unknown package (the image was not built by berth)"
	} else {
		had = "package sha256 " + had
	}
	return precondition("%s %s already has an image (%s) built from %s, not %s: a version is immutable; publish the new package as a new version",
		r.service, r.version, r.ref, had, r.sha)
}

func replyFromRecord(rec *imagev1.ImageRecord) *imagev1.BuildReply {
	return &imagev1.BuildReply{Reference: rec.GetReference(), Digest: rec.GetDigest(), Cached: true, BaseImage: rec.GetBaseImage(),
		Status: &commonv1.Status{Code: commonv1.Code_CODE_OK}}
}

// decide is the cache decision: the reply when the image exists (coord record, confirmed
// by the registry when it answers; or the registry alone, whose image is then recorded),
// nil when it must be built.
func (b *Builder) decide(ctx context.Context, r *request) (reply *imagev1.BuildReply, f *failure) {
	start := time.Now()
	defer func() {
		res := "miss"
		switch {
		case f != nil:
			res = "error"
		case reply != nil:
			res = "hit"
		}
		b.m.decision.WithLabelValues(res).Observe(time.Since(start).Seconds())
	}()
	rec, f := b.readRecord(ctx, r)
	if f != nil {
		return nil, f
	}
	if rec != nil && rec.GetPackageSha256() != r.sha {
		return nil, immutable(r, rec.GetPackageSha256())
	}
	key := r.service + "@" + r.version
	if rec != nil && b.cfg.ConfirmTTL > 0 {
		b.confirmMu.Lock()
		c, ok := b.confirmed[key]
		b.confirmMu.Unlock()
		if ok && c.digest == rec.GetDigest() && time.Since(c.at) < b.cfg.ConfirmTTL {
			return replyFromRecord(rec), nil
		}
	}
	digest, found, err := b.registry.Digest(ctx, r.service, r.version)
	if err == nil && found && rec != nil && digest == rec.GetDigest() && b.cfg.ConfirmTTL > 0 {
		b.confirmMu.Lock()
		if len(b.confirmed) >= maxConfirmations {
			clear(b.confirmed)
		}
		b.confirmed[key] = confirmation{digest: digest, at: time.Now()}
		b.confirmMu.Unlock()
	}
	switch {
	case rec != nil && err != nil:
		// The record says the push completed; the registry being unreachable now is the
		// puller's problem, not a reason to build again.
		b.log.Warn("registry unreachable; answering from the image record", "ref", r.ref, "err", err)
		return replyFromRecord(rec), nil
	case err != nil:
		return nil, registryFailure(err)
	case rec != nil && found && digest == rec.GetDigest():
		return replyFromRecord(rec), nil
	case !found:
		if rec != nil {
			b.log.Warn("image record without an image in the registry; building again", "ref", r.ref, "digest", rec.GetDigest())
		}
		return nil, nil
	}
	// The registry has the tag but coord has no record of it (or of another digest): adopt
	// it when it is this package's image.
	labels, ok, err := b.registry.Labels(ctx, r.service, digest)
	if err != nil {
		return nil, registryFailure(err)
	}
	if !ok {
		return nil, nil
	}
	if got := labels[buildctx.LabelPackageSHA256]; got != r.sha {
		return nil, immutable(r, got)
	}
	adopted := &imagev1.ImageRecord{Digest: digest, Reference: r.ref, BuiltAt: timestamppb.Now(), BaseImage: labels[buildctx.LabelBase],
		PackageSha256: r.sha, Service: r.service, Version: r.version, Builder: b.cfg.Name}
	data, _ := protojson.Marshal(adopted)
	if _, err := b.coord.Put(ctx, r.recordPath(), data); err != nil {
		return nil, coordFailure("record "+r.recordPath(), err)
	}
	b.log.Info("image found in the registry and recorded", "ref", r.ref, "digest", digest)
	return replyFromRecord(adopted), nil
}

// registryFailure classifies an error of the registry client.
func registryFailure(err error) *failure {
	if errors.Is(err, registry.ErrDenied) {
		return precondition("%v: check registry_username and registry_password", err)
	}
	return infra("registry: %v", err)
}

// buildShared builds r once on this replica: the first request starts the build, later
// ones wait for it and answer from its record. The build runs on the builder's own
// context, bounded by build_timeout, so a requester that gives up does not stop it.
func (b *Builder) buildShared(ctx context.Context, r *request) (*imagev1.BuildReply, *failure) {
	key := r.service + "@" + r.version
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return nil, infra("image builder %s is stopping", b.cfg.Name)
	}
	fl := b.inflight[key]
	first := fl == nil
	if first {
		fl = &flight{done: make(chan struct{})}
		b.inflight[key] = fl
		b.builds.Add(1)
		go b.fly(key, fl, r)
	}
	b.mu.Unlock()
	select {
	case <-fl.done:
	case <-ctx.Done():
		f := infra("gave up waiting for the build of %s (it goes on): %v", r.ref, ctx.Err())
		f.code = commonv1.Code_CODE_DEADLINE_EXCEEDED
		return nil, f
	}
	if fl.failure != nil || first {
		return fl.reply, fl.failure
	}
	reply, f := b.decide(ctx, r)
	if f == nil && reply == nil {
		// The record went away in between; the build's own answer still holds.
		reply = fl.reply
	}
	if reply == fl.reply && reply != nil {
		// The first requester owns fl.reply.
		reply = proto.Clone(reply).(*imagev1.BuildReply)
	}
	if reply != nil {
		reply.Cached = true
	}
	return reply, f
}

// fly runs the build of a flight and publishes its result.
func (b *Builder) fly(key string, fl *flight, r *request) {
	defer b.builds.Done()
	ctx, cancel := context.WithTimeout(b.runCtx, b.cfg.BuildTimeout)
	defer cancel()
	fl.reply, fl.failure = b.lockedBuild(ctx, r)
	b.mu.Lock()
	delete(b.inflight, key)
	b.mu.Unlock()
	close(fl.done)
}

// lockedBuild takes the cross-replica lock of r, checks again whether another replica
// built it meanwhile, and builds it.
func (b *Builder) lockedBuild(ctx context.Context, r *request) (*imagev1.BuildReply, *failure) {
	sess, err := b.session()
	if err != nil {
		return nil, coordFailure("build lock", err)
	}
	start := time.Now()
	lease, err := b.coord.LockLeadership(ctx, sess, r.lockPath())
	if err != nil {
		return nil, coordFailure("build lock "+r.lockPath(), err)
	}
	b.m.lockWait.Observe(time.Since(start).Seconds())
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := lease.Resign(rctx); err != nil {
			b.log.Warn("release build lock", "path", lease.Path(), "err", err)
		}
	}()
	rec, f := b.readRecord(ctx, r)
	if f != nil {
		return nil, f
	}
	if rec != nil {
		if rec.GetPackageSha256() != r.sha {
			return nil, immutable(r, rec.GetPackageSha256())
		}
		// Another replica built it while this one waited, unless this is the stale record
		// (its image gone from the registry) that sent the request here.
		digest, found, err := b.registry.Digest(ctx, r.service, r.version)
		if err != nil {
			return nil, registryFailure(err)
		}
		if found && digest == rec.GetDigest() {
			return replyFromRecord(rec), nil
		}
	}
	select {
	case b.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, infra("waiting for a build slot for %s: %v", r.ref, ctx.Err())
	}
	defer func() { <-b.slots }()
	b.m.inProgress.Inc()
	defer b.m.inProgress.Dec()
	return b.buildImage(ctx, r, lease)
}

// tail keeps the last lines of a build's output.
type tail struct {
	max   int
	lines []string
}

func (t *tail) add(line string) {
	if len(line) > 512 {
		line = line[:512] + "…"
	}
	t.lines = append(t.lines, line)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

// buildImage fetches, unpacks, checks, builds, pushes and records r while holding its
// lock, and publishes image.requested and image.built or image.failed.
func (b *Builder) buildImage(ctx context.Context, r *request, lease *coordclient.Leadership) (*imagev1.BuildReply, *failure) {
	start := time.Now()
	t := &tail{max: b.cfg.LogTail}
	token := strconv.FormatUint(lease.Token(), 10)
	base, f := b.baseImage(ctx, r)
	ev := &eventsv1.ImageEvent{Service: r.service, Version: r.version, Reference: r.ref, PackageSha256: r.sha, BaseImage: base,
		Message: "building " + r.ref + " on " + base, At: timestamppb.Now()}
	b.publish(ctx, EventRequested, r.service, natsbus.EventID("image", r.service, r.version, token, EventRequested), ev)
	var digest string
	if f == nil {
		digest, f = b.pipeline(ctx, r, base, t)
	}
	if f == nil {
		rec := &imagev1.ImageRecord{Digest: digest, Reference: r.ref, BuiltAt: timestamppb.Now(), BaseImage: base, PackageSha256: r.sha,
			Service: r.service, Version: r.version, Builder: b.cfg.Name, BuildDurationSeconds: time.Since(start).Seconds()}
		data, err := protojson.Marshal(rec)
		if err == nil {
			phase := time.Now()
			_, err = lease.Put(ctx, r.recordPath(), data)
			b.m.phase.WithLabelValues("record").Observe(time.Since(phase).Seconds())
		}
		switch {
		case errors.Is(err, coordclient.ErrFenced):
			f = infra("record %s: lost the build lock before recording (coord session expired); the pushed image will be adopted on the next request", r.recordPath())
		case err != nil:
			f = coordFailure("record "+r.recordPath(), err)
		}
	}
	d := time.Since(start)
	b.m.phase.WithLabelValues("total").Observe(d.Seconds())
	ev = &eventsv1.ImageEvent{Service: r.service, Version: r.version, Reference: r.ref, Digest: digest, PackageSha256: r.sha, BaseImage: base,
		BuildLog: t.lines, DurationSeconds: d.Seconds(), At: timestamppb.Now()}
	if f != nil {
		f.log = t.lines
		ev.Digest, ev.FailureClass, ev.Message = "", ClassName(f.class), f.msg
		b.m.builds.WithLabelValues(ClassName(f.class)).Inc()
		b.log.Warn("build failed", "ref", r.ref, "class", ClassName(f.class), "err", f.msg)
		f.published = b.publish(ctx, EventFailed, r.service, natsbus.EventID("image", r.service, r.version, token, EventFailed), ev)
		return nil, f
	}
	ev.Message = "built " + r.ref + "@" + digest
	b.m.builds.WithLabelValues("ok").Inc()
	b.log.Info("image built", "ref", r.ref, "digest", digest, "base", base, "duration", d.Round(time.Millisecond))
	b.publish(ctx, EventBuilt, r.service, natsbus.EventID("image", r.service, r.version, token, EventBuilt), ev)
	return &imagev1.BuildReply{Reference: r.ref, Digest: digest, BuildLog: t.lines, BaseImage: base, DurationSeconds: d.Seconds(),
		Status: &commonv1.Status{Code: commonv1.Code_CODE_OK}}, nil
}

// baseImage is r's base: the request's override, else the base_image label of the nearest
// service-tree node up from the service, else the configured default.
func (b *Builder) baseImage(ctx context.Context, r *request) (string, *failure) {
	if r.base != "" {
		return r.base, nil
	}
	for p := r.service; p != "." && p != "/" && p != ""; p = path.Dir(p) {
		n, err := b.coord.Get(ctx, TreePrefix+"/"+p)
		if errors.Is(err, coordclient.ErrNotFound) {
			continue
		}
		if err != nil {
			return "", coordFailure("read the service tree "+TreePrefix+"/"+p, err)
		}
		node := &controllerv1.ServiceNode{}
		if err := unmarshal.Unmarshal(n.Value, node); err != nil {
			return "", precondition("service tree %s/%s: unreadable ServiceNode: %v", TreePrefix, p, err)
		}
		if v := node.GetLabels()[BaseImageLabel]; v != "" {
			if _, err := engine.ParseReference(v); err != nil {
				return "", precondition("service tree %s: label %s: %v", p, BaseImageLabel, err)
			}
			return v, nil
		}
	}
	return b.cfg.BaseImage(), nil
}

// auth is the X-Registry-Auth value for ref: the configured credentials for the
// configured registry, none elsewhere.
func (b *Builder) auth(ref string) string {
	pr, err := engine.ParseReference(ref)
	if err == nil && pr.Domain == b.cfg.Registry {
		return engine.EncodeAuth(b.cfg.RegistryUsername, b.cfg.RegistryPassword)
	}
	return ""
}

// pipeline does the work of a build and returns the pushed digest.
func (b *Builder) pipeline(ctx context.Context, r *request, base string, t *tail) (string, *failure) {
	phase := time.Now()
	observe := func(name string) {
		b.m.phase.WithLabelValues(name).Observe(time.Since(phase).Seconds())
		phase = time.Now()
	}
	pkg, err := b.fetcher.Fetch(ctx, r.url, r.sha)
	observe("fetch")
	if err != nil {
		return "", fetchFailure(ctx, r, err)
	}
	dir, err := os.MkdirTemp(b.cfg.WorkDir, "build-")
	if err != nil {
		return "", infra("build directory in %s: %v", b.cfg.WorkDir, err)
	}
	defer os.RemoveAll(dir)
	app := filepath.Join(dir, "app")
	if _, err := safeextract.Extract(ctx, pkg, app, safeextract.Options{MaxBytes: b.cfg.MaxPackageBytes}); err != nil {
		return "", extractFailure(ctx, r, err)
	}
	d, err := descriptor.Load(filepath.Join(app, "berth.yaml"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", precondition("package %s has no berth.yaml at its root: add the service descriptor (DESIGN §5) and publish the package again", r.url)
	case errors.Is(err, descriptor.ErrInvalid):
		return "", precondition("package %s: %v", r.url, err)
	case err != nil:
		return "", infra("read berth.yaml of %s: %v", r.url, err)
	}
	if d.Service != r.service {
		return "", precondition("package %s: berth.yaml is for service %q, not %q", r.url, d.Service, r.service)
	}
	if err := d.CheckFiles(os.DirFS(app)); err != nil {
		return "", precondition("package %s: %v", r.url, err)
	}
	observe("unpack")

	if _, err := b.engine.EnsureImage(ctx, base, b.auth(base)); err != nil {
		return "", baseFailure(ctx, r, base, err)
	}
	observe("base")

	labels := map[string]string{
		buildctx.LabelService: r.service, buildctx.LabelVersion: r.version, buildctx.LabelPackageSHA256: r.sha, buildctx.LabelBase: base,
	}
	for k, v := range b.labels {
		labels[k] = v
	}
	pr, pw := io.Pipe()
	werr := make(chan error, 1)
	go func() {
		err := buildctx.WriteApp(pw, buildctx.Dockerfile(base, labels), app)
		pw.CloseWithError(err)
		werr <- err
	}()
	_, err = b.engine.Build(ctx, pr, engine.BuildOptions{Tag: r.ref, Log: t.add})
	// Unblock the writer if the engine stopped reading early, then wait for it.
	pr.CloseWithError(errors.New("build ended"))
	if e := <-werr; e != nil && err == nil {
		err = e
	}
	observe("build")
	if err != nil {
		return "", engineFailure(ctx, "build "+r.ref, err)
	}
	digest, err := b.engine.Push(ctx, r.ref, b.auth(r.ref), t.add)
	observe("push")
	if err != nil {
		return "", engineFailure(ctx, "push "+r.ref, err)
	}
	return digest, nil
}

// timedOut turns the end of the build's context into a failure, or nil.
func timedOut(ctx context.Context, r *request) *failure {
	if ctx.Err() == nil {
		return nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return infra("build of %s ran out of time (build_timeout)", r.ref)
	}
	return infra("build of %s cancelled: the builder is stopping", r.ref)
}

func fetchFailure(ctx context.Context, r *request, err error) *failure {
	if f := timedOut(ctx, r); f != nil {
		return f
	}
	switch {
	case errors.Is(err, artifact.ErrBadURL):
		return invalid("package_url", "%v", err)
	case errors.Is(err, artifact.ErrBadDigest), errors.Is(err, artifact.ErrChecksum):
		return invalid("package_sha256", "%v", err)
	case errors.Is(err, artifact.ErrNotFound), errors.Is(err, artifact.ErrDenied), errors.Is(err, artifact.ErrTooLarge), errors.Is(err, artifact.ErrProtocol):
		return precondition("package: %v", err)
	}
	return infra("package: %v", err)
}

func extractFailure(ctx context.Context, r *request, err error) *failure {
	if f := timedOut(ctx, r); f != nil {
		return f
	}
	for _, rule := range []error{safeextract.ErrUnsafePath, safeextract.ErrUnsafeLink, safeextract.ErrUnsupportedType,
		safeextract.ErrDuplicate, safeextract.ErrLimit, safeextract.ErrFormat} {
		if errors.Is(err, rule) {
			return precondition("package %s cannot be unpacked safely: %v", r.url, err)
		}
	}
	return infra("unpack package %s: %v", r.url, err)
}

func baseFailure(ctx context.Context, r *request, base string, err error) *failure {
	if f := timedOut(ctx, r); f != nil {
		return f
	}
	switch {
	case errors.Is(err, engine.ErrNotFound):
		f := precondition("base image %s does not exist (not on the engine, not in its registry): make it with `berth images base` "+
			"(or scripts/images-base.sh), or set the %s label of %s in the service tree to an image that exists: %v", base, BaseImageLabel, r.service, err)
		f.field = "base_image"
		return f
	case errors.Is(err, engine.ErrBadReference):
		return invalid("base_image", "%v", err)
	case errors.Is(err, engine.ErrDenied):
		return precondition("base image %s: the registry refused access: %v", base, err)
	}
	return engineFailure(ctx, "base image "+base, err)
}

func engineFailure(ctx context.Context, op string, err error) *failure {
	if ctx.Err() != nil {
		return infra("%s: %v", op, ctx.Err())
	}
	switch {
	case errors.Is(err, engine.ErrUnavailable):
		return infra("%v (is the Docker engine running?)", err)
	case errors.Is(err, engine.ErrDenied):
		return precondition("%v: check registry_username and registry_password", err)
	case errors.Is(err, engine.ErrRegistryUnavailable):
		return infra("%v", err)
	}
	// A build error after the base image was found is the engine's trouble (disk, daemon),
	// not the package's: the package only adds files. Retryable.
	return infra("%v", err)
}

// publish publishes an image event and reports whether it was stored; a failure is logged,
// never returned: coord holds the truth and the event is a notification.
func (b *Builder) publish(ctx context.Context, typ, service, id string, ev *eventsv1.ImageEvent) bool {
	subject, err := subjects.ImageEvent(typ, service)
	if err == nil {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		err = b.bus.PublishEvent(pctx, natsbus.Event{Subject: subject, ID: id, Type: subjects.EventType(subjects.DomainImage, typ),
			Source: b.bus.Source(), ServicePath: service, Data: ev})
	}
	if err != nil {
		b.log.Warn("image event not published", "type", typ, "service", service, "err", err)
		return false
	}
	return true
}
