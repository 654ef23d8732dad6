package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	imagev1 "github.com/berthdev/berth/proto/image/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/task-controller/internal/model"
	"github.com/berthdev/berth/services/task-controller/internal/strategy"
)

// Container mode (DESIGN §2, steps 2 to 7). A container deployment runs its stages in
// order: StageImage asks the image builder for the version's image (request/reply on
// subjects.RPCBuild; a replacement run reads the builder's ImageRecord instead),
// StagePlacement asks the scheduler for the allocations (subjects.RPCPlace, request id =
// the deployment id, so that a retry or a new leader gets the same placement) and lists
// the service's old allocations, and StageSteps rolls out: one target per allocation, in
// batches, each a container-deploy step to the allocation's host. A target succeeds once
// its instance is healthy in the name service (the health gate). After each batch a share
// of the old allocations proportional to the ramp is retired (container-deploy stop,
// which drains the instance first, then subjects.RPCRelease), so that the old containers
// go only when new ones serve. Once the deployment has ended, StageCleanup releases the
// allocations it holds no container on and, after a rollback, records the version that
// runs on the rolled-back allocations.
//
// The requests of a stage are idempotent, so a stage is simply asked again after a
// failure or a failover. They run on a goroutine of the runner (runOp), whose result comes
// back to the runner as msgOp.

// ContainerDeployPlugin is the agent's built-in plugin of container mode.
const ContainerDeployPlugin = "container-deploy"

// KindRetire is the step that stops an old allocation's container.
const KindRetire = "retire"

// StageCleanup is the stage of an ended container deployment that releases what it no
// longer needs.
const StageCleanup = "cleanup"

// Timeouts of the requests of the stages. A build may take minutes; the builder goes on
// when the requester gives up, and the request asked again waits for the same build.
const (
	buildRequestTimeout   = 5 * time.Minute
	placeRequestTimeout   = 30 * time.Second
	releaseRequestTimeout = 15 * time.Second
	// placeChunk is the largest count of one placement request (the scheduler commits one
	// request in one coord transaction, at most 63 allocations).
	placeChunk = 50
)

// msgOp is the outcome of a stage's request.
type msgOp struct {
	stage string
	gen   uint64
	res   any
	err   error
}

// containerRun is what a runner of a container deployment keeps in memory only.
type containerRun struct {
	// busy names the stage whose request is out; gen tells its result from a stale one.
	busy string
	gen  uint64
	// relisted is set once the old allocations were listed again before the last
	// batch's retirement (allocations placed again meanwhile are retired too).
	relisted bool
	// deferRelease is set when releasing retired allocations kept failing: the rollout
	// goes on and cleanup releases them.
	deferRelease bool
	// placeAttempts counts the placement requests of this leadership that failed, and
	// placeMaybe is set when one of them may have committed allocations whose reply was
	// lost; cleanup then releases every allocation of the deployment.
	placeAttempts int
	placeMaybe    bool
}

// opError is a classified failure of a stage's request.
type opError struct {
	class string
	msg   string
	// maybeDone is set when the request may have taken effect (a placement whose reply
	// was lost).
	maybeDone bool
}

func (e *opError) Error() string { return e.msg }

func infraErr(format string, args ...any) error {
	return &opError{class: model.ClassInfrastructure, msg: fmt.Sprintf(format, args...)}
}

func appErr(format string, args ...any) error {
	return &opError{class: model.ClassApplication, msg: fmt.Sprintf(format, args...)}
}

// container reports whether the run is a container deployment.
func (r *runner) container() bool {
	return r.kind == model.KindDeployment && model.IsContainer(r.dep)
}

// rollN is the number of targets that roll out (and count in batches and the failure
// budget): every target in package mode; the allocations, not the retire targets, in
// container mode.
func (r *runner) rollN() int {
	if r.container() {
		return len(r.dep.GetAllocations())
	}
	return len(r.hosts)
}

// pendingTarget is the record of a target that has none in coord yet.
func (r *runner) pendingTarget(key string) *controllerv1.Target {
	if r.kind == model.KindDeployment {
		return model.PendingTarget(r.dep, key)
	}
	return &controllerv1.Target{Host: key, State: model.TargetPending}
}

// lookup finds the target a message from host about stepID is for. Step ids are
// <kind>-<target key>, and kinds have no '-'.
func (r *runner) lookup(host, stepID string) (int, bool) {
	key := host
	if r.container() {
		_, k, ok := strings.Cut(stepID, "-")
		if !ok {
			return 0, false
		}
		key = k
	}
	i, ok := r.idx[key]
	if !ok || r.targets[i].GetHost() != host {
		return 0, false
	}
	return i, true
}

// resetTargets rebuilds the targets from the deployment's allocations and retire list,
// keeping the records of the targets that stay.
func (r *runner) resetTargets() {
	oldKeys := make([]string, len(r.targets))
	old := map[string]int{}
	for i, t := range r.targets {
		oldKeys[i] = model.TargetKey(t)
		old[oldKeys[i]] = i
	}
	oldTargets, oldVols := r.targets, r.vols
	r.hosts = model.TargetKeys(r.dep)
	r.targets = make([]*controllerv1.Target, len(r.hosts))
	r.vols = make([]vol, len(r.hosts))
	r.idx = make(map[string]int, len(r.hosts))
	for i, key := range r.hosts {
		r.idx[key] = i
		if j, ok := old[key]; ok {
			r.targets[i], r.vols[i] = oldTargets[j], oldVols[j]
		} else {
			r.targets[i] = r.pendingTarget(key)
		}
	}
	// Dirty marks follow their targets to their new indexes.
	dirty := r.dirty
	r.dirty, r.hard = map[int]bool{}, 0
	for i, hard := range dirty {
		if j, ok := r.idx[oldKeys[i]]; ok {
			r.dirty[j] = hard
			if hard {
				r.hard++
			}
		}
	}
	r.budget = strategy.Budget(r.strat.GetMaxFailures(), r.rollN())
}

// startContainer starts a container deployment: its first stage.
func (r *runner) startContainer(now time.Time) {
	for _, st := range r.dep.GetStages() {
		switch st {
		case StageImage, StagePlacement, StageSteps:
		default:
			r.terminate(now, model.StateFailed, fmt.Sprintf("stage %q of the pipeline is not supported by this controller", st), "")
			return
		}
	}
	if len(r.dep.GetStages()) == 0 || r.dep.GetStages()[len(r.dep.GetStages())-1] != StageSteps {
		r.terminate(now, model.StateFailed, "a container deployment's pipeline must end with the steps stage", "")
		return
	}
	prev := r.st.GetState()
	r.st.State = model.StateRunning
	r.st.StartedAt = ts(now)
	r.st.Stage = r.dep.GetStages()[0]
	r.st.Message = stageMessage(r.st.Stage, r.dep)
	r.touchHeader()
	r.runEvent("started", prev, -1, "started", r.startedID()...)
	if r.st.Stage == StageSteps {
		r.enterSteps(now)
	}
}

func stageMessage(stage string, d *controllerv1.Deployment) string {
	switch stage {
	case StageImage:
		if d.GetReplacement() != nil {
			return "reading the image record of " + d.GetVersion()
		}
		return "asking the image builder for the image of " + d.GetVersion()
	case StagePlacement:
		return fmt.Sprintf("asking the scheduler for %d containers", d.GetPlacement().GetReplicas())
	}
	return ""
}

// nextStage moves the deployment to the stage after the current one.
func (r *runner) nextStage(now time.Time) {
	stages := r.dep.GetStages()
	i := slices.Index(stages, r.st.GetStage())
	r.st.StageRetries, r.st.StageRetryAt = 0, nil
	if i < 0 || i+1 >= len(stages) {
		r.st.Stage = StageSteps
	} else {
		r.st.Stage = stages[i+1]
	}
	r.st.Message = stageMessage(r.st.GetStage(), r.dep)
	r.touchHeader()
	if r.st.GetStage() == StageSteps {
		r.enterSteps(now)
	}
	r.again = true
}

// enterSteps plans the batches over the allocations.
func (r *runner) enterSteps(now time.Time) {
	r.resetTargets()
	batches, err := strategy.Plan(r.strat.GetBatches(), r.rollN())
	if err != nil {
		r.terminate(now, model.StateFailed, fmt.Sprintf("cannot plan the batches: %v", err), "")
		return
	}
	r.st.Stage = StageSteps
	r.st.Batches = batches
	r.st.CurrentBatch = 0
	r.st.Message = ""
	r.setProgressDeadline(now)
	r.touchHeader()
}

// preSteps runs the stages before the rollout: it sends the stage's request when none is
// out and no retry is pending.
func (r *runner) preSteps(now time.Time) {
	if r.ctr.busy != "" {
		return
	}
	if at := r.st.GetStageRetryAt(); at != nil && now.Before(at.AsTime()) {
		return
	}
	switch r.st.GetStage() {
	case StageImage:
		if r.dep.GetReplacement() != nil {
			r.runOp(StageImage, r.readImage)
		} else {
			r.runOp(StageImage, r.buildImage)
		}
	case StagePlacement:
		r.runOp(StagePlacement, r.place)
	default:
		r.terminate(now, model.StateFailed, fmt.Sprintf("unknown stage %q", r.st.GetStage()), "")
	}
}

// runOp runs fn on a goroutine of the runner; its outcome comes back as msgOp.
func (r *runner) runOp(stage string, fn func(ctx context.Context) (any, error)) {
	r.ctr.busy = stage
	r.ctr.gen++
	gen := r.ctr.gen
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		res, err := fn(r.ctx)
		if r.ctx.Err() != nil {
			return
		}
		r.mail.push(msgOp{stage: stage, gen: gen, res: res, err: err})
	}()
}

// onOp takes a stage's outcome.
func (r *runner) onOp(m msgOp) {
	if m.gen != r.ctr.gen || m.stage != r.ctr.busy {
		return
	}
	r.ctr.busy = ""
	now := time.Now()
	outcome := "ok"
	if m.err != nil {
		outcome = model.ClassInfrastructure
		var oe *opError
		if errors.As(m.err, &oe) {
			outcome = oe.class
		}
	}
	stage := m.stage
	if stage == KindRetire {
		stage = "release"
	}
	r.e.m.StageRequests.WithLabelValues(stage, outcome).Inc()
	if m.stage == StageCleanup || m.stage == KindRetire {
		r.onReleased(now, m)
		return
	}
	if m.err != nil {
		if m.stage == StagePlacement {
			r.ctr.placeAttempts++
			var oe *opError
			if !errors.As(m.err, &oe) || oe.maybeDone {
				r.ctr.placeMaybe = true
			}
		}
		if model.TerminalRun(r.st.GetState()) {
			return
		}
		r.stageFailed(now, m.stage, m.err)
		return
	}
	switch res := m.res.(type) {
	case *controllerv1.ContainerImage:
		r.dep.Image = res
		r.touchHeader()
		if model.TerminalRun(r.st.GetState()) {
			return
		}
		r.nextStage(now)
	case *placed:
		// Recorded even when the run has ended meanwhile, so that cleanup releases them.
		r.dep.Allocations, r.dep.Retire = res.allocations, res.retire
		r.dep.PreviousVersion, r.dep.PreviousImage = res.previousVersion, res.previousImage
		r.touchHeader()
		r.resetTargets()
		r.placedEvent(now)
		if model.TerminalRun(r.st.GetState()) {
			return
		}
		r.nextStage(now)
	case replacementGone:
		r.terminate(now, model.StateSucceeded, string(res), "")
	}
}

// stageFailed handles a failed stage request: an infrastructure failure is asked again
// after a backoff, up to infra_retries; an application failure ends the deployment.
func (r *runner) stageFailed(now time.Time, stage string, err error) {
	class, msg := model.ClassInfrastructure, err.Error()
	var oe *opError
	if errors.As(err, &oe) {
		class = oe.class
	}
	if class == model.ClassApplication {
		r.terminate(now, model.StateFailed, stage+": "+msg, model.ClassApplication)
		return
	}
	r.st.StageRetries++
	if r.st.GetStageRetries() > r.strat.GetInfraRetries() {
		r.terminate(now, model.StateFailed, fmt.Sprintf("%s: gave up after %d retries: %s", stage, r.st.GetStageRetries()-1, msg), model.ClassInfrastructure)
		return
	}
	r.st.StageRetryAt = ts(now.Add(r.backoff(r.st.GetStageRetries())))
	r.st.Message = fmt.Sprintf("%s: retry %d of %d: %s", stage, r.st.GetStageRetries(), r.strat.GetInfraRetries(), msg)
	r.touchHeader()
}

// buildImage asks the image builder for the version's image.
func (r *runner) buildImage(ctx context.Context) (any, error) {
	req := &imagev1.BuildRequest{Service: r.service, Version: r.dep.GetVersion(), PackageUrl: r.dep.GetArtifact().GetUrl(),
		PackageSha256: r.dep.GetArtifact().GetSha256(), RequestId: r.id}
	reply := &imagev1.BuildReply{}
	ctx, cancel := context.WithTimeout(ctx, buildRequestTimeout)
	defer cancel()
	if err := r.e.bus.Request(ctx, subjects.RPCBuild, req, reply, natsbus.WithID(r.id+".build"), natsbus.WithServicePath(r.service)); err != nil {
		return nil, classifyBuild(err)
	}
	pull, err := pullReference(reply.GetReference(), reply.GetDigest())
	if err != nil {
		return nil, infraErr("the image builder answered an unusable image: %v", err)
	}
	return &controllerv1.ContainerImage{Reference: reply.GetReference(), Digest: reply.GetDigest(), Pull: pull, Cached: reply.GetCached()}, nil
}

// readImage reads the ImageRecord of a replacement run's version (the allocation's).
func (r *runner) readImage(ctx context.Context) (any, error) {
	rep := r.dep.GetReplacement()
	if len(r.dep.GetAllocations()) == 1 {
		a := r.dep.GetAllocations()[0]
		if _, err := r.e.coord.Get(ctx, model.AllocPath(a.GetHost(), a.GetId())); errors.Is(err, coordclient.ErrNotFound) {
			return replacementGone(fmt.Sprintf("allocation %s is no longer allocated (released since it was placed again): nothing to deploy", rep.GetAllocation())), nil
		} else if err != nil {
			return nil, infraErr("read allocation %s: %v", a.GetId(), err)
		}
	}
	rec, err := readImageRecord(ctx, r.e.coord, r.service, r.dep.GetVersion())
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, appErr("no image of %s %s is recorded (%s): the replacement cannot be deployed", r.service, r.dep.GetVersion(), model.ImagePath(r.service, r.dep.GetVersion()))
	}
	return rec, nil
}

// replacementGone ends a replacement run whose allocation is gone.
type replacementGone string

// readImageRecord reads an image record as a ContainerImage; nil when there is none.
func readImageRecord(ctx context.Context, cc *coordclient.Client, service, version string) (*controllerv1.ContainerImage, error) {
	n, err := cc.Get(ctx, model.ImagePath(service, version))
	if errors.Is(err, coordclient.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, infraErr("read the image record of %s %s: %v", service, version, err)
	}
	rec := &imagev1.ImageRecord{}
	if err := model.Unmarshal(n.Value, rec); err != nil {
		return nil, appErr("image record of %s %s: %v", service, version, err)
	}
	pull, err := pullReference(rec.GetReference(), rec.GetDigest())
	if err != nil {
		return nil, appErr("image record of %s %s: %v", service, version, err)
	}
	return &controllerv1.ContainerImage{Reference: rec.GetReference(), Digest: rec.GetDigest(), Pull: pull, Cached: true}, nil
}

// pullReference pins reference by digest: <registry>/<path>@sha256:<hex> (the tag is
// dropped).
func pullReference(reference, digest string) (string, error) {
	hexPart, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(hexPart) != 64 || strings.Trim(hexPart, "0123456789abcdef") != "" {
		return "", fmt.Errorf("digest %q: want sha256:<64 hex digits>", digest)
	}
	repo := reference
	if at := strings.IndexByte(repo, '@'); at >= 0 {
		repo = repo[:at]
	}
	if c := strings.LastIndexByte(repo, ':'); c > strings.LastIndexByte(repo, '/') {
		repo = repo[:c]
	}
	if repo == "" || strings.ContainsAny(repo, " \t\n") {
		return "", fmt.Errorf("reference %q: not an image reference", reference)
	}
	return repo + "@" + digest, nil
}

// classifyBuild turns a failed build request into an opError.
func classifyBuild(err error) error {
	var se *natsbus.StatusError
	switch {
	case errors.Is(err, natsbus.ErrNoResponders):
		return infraErr("the image builder is unreachable (no responder on %s)", subjects.RPCBuild)
	case errors.As(err, &se):
		msg := se.Message
		if log := lastLine(se.Details["build_log"]); log != "" && !strings.Contains(msg, log) {
			msg += " (build log: " + log + ")"
		}
		if se.Details["failure_class"] == model.ClassApplication {
			return appErr("the image of the package cannot be built: %s", msg)
		}
		switch se.Code {
		case commonv1.Code_CODE_INVALID_ARGUMENT, commonv1.Code_CODE_FAILED_PRECONDITION, commonv1.Code_CODE_NOT_FOUND,
			commonv1.Code_CODE_ALREADY_EXISTS, commonv1.Code_CODE_PERMISSION_DENIED:
			if se.Details["failure_class"] != model.ClassInfrastructure {
				return appErr("the image builder refused the build: %s", msg)
			}
		}
		return infraErr("the image builder could not build the image: %s", msg)
	case errors.Is(err, natsbus.ErrTimeout):
		return infraErr("the image builder did not answer in time: %v", err)
	}
	return infraErr("ask the image builder: %v", err)
}

// classifyPlace turns a failed placement request into an opError.
func classifyPlace(err error) error {
	var se *natsbus.StatusError
	switch {
	case errors.Is(err, natsbus.ErrNoResponders):
		return infraErr("the scheduler is unreachable (no responder on %s)", subjects.RPCPlace)
	case errors.As(err, &se):
		switch se.Code {
		case commonv1.Code_CODE_RESOURCE_EXHAUSTED:
			return infraErr("no capacity: %s", se.Message)
		case commonv1.Code_CODE_INVALID_ARGUMENT:
			field := se.Details["field"]
			if field != "" {
				field = " (" + field + ")"
			}
			return appErr("the scheduler refused the placement%s: %s", field, se.Message)
		}
		return infraErr("the scheduler could not place the containers: %s", se.Message)
	case errors.Is(err, natsbus.ErrTimeout):
		return infraErr("the scheduler did not answer in time: %v", err)
	}
	return infraErr("ask the scheduler: %v", err)
}

// placeMayHaveCommitted reports whether a failed placement request may have committed
// allocations: not when nobody answered or the scheduler refused it.
func placeMayHaveCommitted(err error) bool {
	var se *natsbus.StatusError
	switch {
	case errors.Is(err, natsbus.ErrNoResponders):
		return false
	case errors.As(err, &se):
		switch se.Code {
		case commonv1.Code_CODE_RESOURCE_EXHAUSTED, commonv1.Code_CODE_INVALID_ARGUMENT:
			return false
		}
	}
	return true
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// placed is the outcome of the placement stage.
type placed struct {
	allocations     []*controllerv1.ContainerAllocation
	retire          []*controllerv1.ContainerAllocation
	previousVersion string
	previousImage   string
}

// place asks the scheduler for the allocations (in requests of at most placeChunk, the
// first with the deployment id as request id, the next with <id>-2, <id>-3...), then lists
// the service's other allocations, which the rollout retires, and the image they run.
func (r *runner) place(ctx context.Context) (any, error) {
	p := r.dep.GetPlacement()
	var allocs []*inventoryv1.Allocation
	for n, chunk := int(p.GetReplicas()), 0; n > 0; chunk++ {
		count := min(n, placeChunk)
		n -= count
		rid := r.id
		if chunk > 0 {
			rid = r.id + "-" + strconv.Itoa(chunk+1)
		}
		req := &inventoryv1.PlacementRequest{RequestId: rid, Service: r.service, DeploymentId: r.id, Version: r.dep.GetVersion(),
			Count: uint32(count), Resources: &inventoryv1.Resources{CpuMillis: p.GetCpuMillis(), MemoryBytes: p.GetMemoryBytes()},
			Constraints: p.GetConstraints(), Spread: p.GetSpread(), MaxPerHost: p.GetMaxPerHost()}
		reply := &inventoryv1.PlacementReply{}
		rctx, cancel := context.WithTimeout(ctx, placeRequestTimeout)
		err := r.e.bus.Request(rctx, subjects.RPCPlace, req, reply, natsbus.WithID(rid+".place"), natsbus.WithServicePath(r.service))
		cancel()
		if err != nil {
			cerr := classifyPlace(err)
			var oe *opError
			if errors.As(cerr, &oe) && (chunk > 0 || placeMayHaveCommitted(err)) {
				oe.maybeDone = true
			}
			return nil, cerr
		}
		if len(reply.GetAllocations()) != count {
			return nil, infraErr("the scheduler placed %d of %d containers: %s", len(reply.GetAllocations()), count, reply.GetExplanation())
		}
		allocs = append(allocs, reply.GetAllocations()...)
	}
	out := &placed{}
	for _, a := range rolloutOrder(allocs) {
		if err := model.CheckAllocationID(a.GetId()); err != nil {
			return nil, infraErr("the scheduler answered a bad allocation: %v", err)
		}
		if err := model.CheckHost(a.GetHost()); err != nil {
			return nil, infraErr("the scheduler answered a bad allocation %s: %v", a.GetId(), err)
		}
		out.allocations = append(out.allocations, containerAlloc(a))
	}
	olds, err := r.oldAllocations(ctx, nil)
	if err != nil {
		return nil, err
	}
	out.retire = olds
	out.previousVersion = previousVersion(olds)
	if out.previousVersion != "" {
		img, err := readImageRecord(ctx, r.e.coord, r.service, out.previousVersion)
		if err != nil {
			var oe *opError
			if errors.As(err, &oe) && oe.class == model.ClassApplication {
				img = nil
			} else {
				return nil, err
			}
		}
		if img != nil {
			out.previousImage = img.GetPull()
		}
	}
	return out, nil
}

func containerAlloc(a *inventoryv1.Allocation) *controllerv1.ContainerAllocation {
	return &controllerv1.ContainerAllocation{Id: a.GetId(), Host: a.GetHost(), Ip: a.GetIp(), Dc: a.GetDc(),
		Version: a.GetVersion(), DeploymentId: a.GetDeploymentId()}
}

// rolloutOrder orders allocations round robin over their hosts (hosts sorted), so that
// every batch spreads over as many hosts as it can.
func rolloutOrder(allocs []*inventoryv1.Allocation) []*inventoryv1.Allocation {
	byHost := map[string][]*inventoryv1.Allocation{}
	var hosts []string
	for _, a := range allocs {
		if byHost[a.GetHost()] == nil {
			hosts = append(hosts, a.GetHost())
		}
		byHost[a.GetHost()] = append(byHost[a.GetHost()], a)
	}
	sort.Strings(hosts)
	out := make([]*inventoryv1.Allocation, 0, len(allocs))
	for len(out) < len(allocs) {
		for _, h := range hosts {
			if q := byHost[h]; len(q) > 0 {
				out = append(out, q[0])
				byHost[h] = q[1:]
			}
		}
	}
	return out
}

// oldAllocations lists the service's allocations that belong to another deployment and
// are not in skip, ordered by host then id.
func (r *runner) oldAllocations(ctx context.Context, skip map[string]bool) ([]*controllerv1.ContainerAllocation, error) {
	res, err := r.e.coord.List(ctx, model.AllocPrefix, coordclient.Recursive())
	if err != nil {
		if errors.Is(err, coordclient.ErrNotFound) {
			return nil, nil
		}
		return nil, infraErr("list the allocations: %v", err)
	}
	var out []*controllerv1.ContainerAllocation
	for _, n := range res.Nodes {
		rel := strings.TrimPrefix(n.Path, model.AllocPrefix+"/")
		if n.Version == 0 || !strings.Contains(rel, "/") {
			continue
		}
		a := &inventoryv1.Allocation{}
		if model.Unmarshal(n.Value, a) != nil || a.GetService() != r.service || a.GetDeploymentId() == r.id || skip[a.GetId()] {
			continue
		}
		if model.CheckAllocationID(a.GetId()) != nil || model.CheckHost(a.GetHost()) != nil {
			continue
		}
		out = append(out, containerAlloc(a))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetHost() != out[j].GetHost() {
			return out[i].GetHost() < out[j].GetHost()
		}
		return out[i].GetId() < out[j].GetId()
	})
	return out, nil
}

// previousVersion is the version most old allocations run; a tie goes to the version of
// the newest deployment (deployment ids sort by time).
func previousVersion(olds []*controllerv1.ContainerAllocation) string {
	count := map[string]int{}
	newest := map[string]string{}
	for _, a := range olds {
		if a.GetVersion() == "" {
			continue
		}
		count[a.GetVersion()]++
		newest[a.GetVersion()] = max(newest[a.GetVersion()], a.GetDeploymentId())
	}
	best := ""
	for v, n := range count {
		switch {
		case best == "", n > count[best], n == count[best] && newest[v] > newest[best],
			n == count[best] && newest[v] == newest[best] && v > best:
			best = v
		}
	}
	return best
}

// placedEvent queues deploy.placed.
func (r *runner) placedEvent(now time.Time) {
	hosts := map[string][]string{}
	var order []string
	for _, a := range r.dep.GetAllocations() {
		if hosts[a.GetHost()] == nil {
			order = append(order, a.GetHost())
		}
		hosts[a.GetHost()] = append(hosts[a.GetHost()], a.GetIp())
	}
	parts := make([]string, 0, len(order))
	for _, h := range order {
		parts = append(parts, h+" ("+strings.Join(hosts[h], ", ")+")")
	}
	msg := fmt.Sprintf("placed %d containers on %d hosts: %s", len(r.dep.GetAllocations()), len(order), strings.Join(parts, ", "))
	if n := len(r.dep.GetRetire()); n > 0 {
		msg += fmt.Sprintf("; %d old allocations of %s to retire", n, r.dep.GetPreviousVersion())
	}
	subject, err := subjects.DeployEvent("placed", r.service)
	if err != nil {
		return
	}
	r.events = append(r.events, natsbus.Event{Subject: subject, ID: natsbus.EventID(r.id, "placed"), Type: subjects.EventType(subjects.DomainDeploy, "placed"),
		Source: r.e.cfg.Source, ServicePath: r.service, Time: now, Data: &eventsv1.DeployEvent{
			DeploymentId: r.id, Service: r.service, Version: r.dep.GetVersion(), Mode: r.dep.GetMode(), State: r.st.GetState(),
			PreviousState: r.st.GetState(), Batch: -1, Message: msg, Counts: r.eventCounts(), RequestedBy: r.dep.GetRequestedBy(),
			At: timestamppb.New(now)}})
}

// startContainerTarget dispatches a container target's first step: deploy for an
// allocation, retire for an old one.
func (r *runner) startContainerTarget(now time.Time, i int, batch int32) {
	t := r.targets[i]
	t.Batch = batch
	t.StartedAt = ts(now)
	kind := KindDeploy
	if t.GetRetire() {
		kind = KindRetire
	} else {
		t.PreviousVersion = r.dep.GetPreviousVersion()
	}
	r.setTargetState(now, i, model.TargetDispatched)
	r.startStep(now, i, kind)
}

// containerStep fills a container-deploy step request.
func (r *runner) containerStep(req *agentv1.StepRequest, t *controllerv1.Target, s *controllerv1.StepRecord, health time.Duration) {
	req.Plugin = ContainerDeployPlugin
	p := r.dep.GetPlacement()
	deploy := func(version, image string) {
		req.Action = "deploy"
		req.Arguments = map[string]string{"service": r.service, "version": version, "deployment": r.id,
			"allocation": t.GetAllocation(), "image": image, "ip": t.GetIp(),
			"cpu_millis": strconv.FormatUint(p.GetCpuMillis(), 10), "memory_bytes": strconv.FormatUint(p.GetMemoryBytes(), 10),
			"health_deadline": health.String()}
	}
	stop := func() {
		req.Action = "stop"
		req.Arguments = map[string]string{"service": r.service, "allocation": t.GetAllocation()}
	}
	switch s.GetKind() {
	case KindDeploy:
		deploy(r.dep.GetVersion(), r.dep.GetImage().GetPull())
	case KindRollback:
		if r.dep.GetPreviousImage() != "" {
			deploy(r.dep.GetPreviousVersion(), r.dep.GetPreviousImage())
		} else {
			stop()
		}
	default: // KindRetire
		stop()
	}
}

// retireBatch retires the old allocations due after batch b: it starts their stop steps
// (within max_parallel), waits for them, then releases the stopped ones. It reports
// whether the batch's retirement is done.
func (r *runner) retireBatch(now time.Time, b *controllerv1.Batch) bool {
	if r.dep.GetReplacement() != nil {
		// A replacement run adds a container back to its deployment's set; it retires
		// nothing.
		return true
	}
	n := r.rollN()
	last := int(b.GetIndex()) == len(r.st.GetBatches())-1
	if last && !r.ctr.relisted {
		// Allocations placed again (a host died) during the rollout are old too.
		skip := map[string]bool{}
		for _, t := range r.targets {
			skip[model.TargetKey(t)] = true
		}
		more, err := r.oldAllocations(r.ctx, skip)
		if err != nil {
			r.e.log.Warn("list old allocations again", "id", r.id, "err", err)
			return false
		}
		r.ctr.relisted = true
		if len(more) > 0 {
			r.dep.Retire = append(r.dep.Retire, more...)
			r.touchHeader()
			r.resetTargets()
		}
	}
	m := len(r.dep.GetRetire())
	if m == 0 {
		return true
	}
	want := retireDue(m, n, int(b.GetEnd()), last)
	window := int(r.strat.GetMaxParallel())
	if window <= 0 {
		window = m
	}
	inflight := 0
	for i := n; i < n+want; i++ {
		if model.InFlightTarget(r.targets[i].GetState()) {
			inflight++
		}
	}
	for i := n; i < n+want && inflight < window; i++ {
		if r.targets[i].GetState() == model.TargetPending {
			r.startContainerTarget(now, i, b.GetIndex())
			inflight++
		}
	}
	if inflight > 0 {
		return false
	}
	if ids := r.toRelease(false); len(ids) > 0 && !r.ctr.deferRelease {
		if at := r.st.GetStageRetryAt(); r.ctr.busy == "" && (at == nil || !now.Before(at.AsTime())) {
			r.runOp(KindRetire, r.releaseOp(ids, nil))
		}
		return false
	}
	return true
}

// retireDue is how many of m old allocations are retired once the first end of n new
// targets have rolled out: the same share (rounded up), every one after the last batch.
func retireDue(m, n, end int, last bool) int {
	if last || n <= 0 {
		return m
	}
	return min(m, (m*end+n-1)/n)
}

// retiredSummary says how the old allocations' retirement went, for the run's message.
func (r *runner) retiredSummary() string {
	n := r.rollN()
	if len(r.targets) == n {
		return ""
	}
	ok, bad := 0, 0
	for _, t := range r.targets[n:] {
		if retiredOK(t) {
			ok++
		} else {
			bad++
		}
	}
	msg := fmt.Sprintf("; %d old allocations of %s retired", ok, r.dep.GetPreviousVersion())
	if bad > 0 {
		msg += fmt.Sprintf(", %d could not be stopped (kept)", bad)
	}
	return msg
}

// retiredOK reports whether a retire target's allocation may be released: its container
// was stopped, or its host is out of reach (the allocation is not worth keeping for it:
// kept, it would be placed again elsewhere with the old version).
func retiredOK(t *controllerv1.Target) bool {
	return t.GetState() == model.TargetSucceeded || t.GetState() == model.TargetUnreachable
}

// toRelease lists the allocations to release now: retired ones; and, once the deployment
// has ended (ended), its own allocations that hold no container: never deployed, stopped by
// the rollback, or failed (the agent removes a container whose health never passed).
func (r *runner) toRelease(ended bool) []string {
	var ids []string
	for _, t := range r.targets {
		if t.GetReleased() {
			continue
		}
		switch {
		case t.GetRetire():
			if retiredOK(t) {
				ids = append(ids, t.GetAllocation())
			}
		case !ended:
		case !t.GetTouched() && (t.GetState() == model.TargetPending || t.GetState() == model.TargetSkipped):
			ids = append(ids, t.GetAllocation())
		case t.GetRollback() == model.TargetSucceeded && r.dep.GetPreviousImage() == "":
			ids = append(ids, t.GetAllocation())
		case t.GetState() == model.TargetFailed && t.GetFailureClass() == model.ClassApplication &&
			t.GetRollback() != model.TargetSucceeded && t.GetRollback() != model.TargetRunning:
			ids = append(ids, t.GetAllocation())
		}
	}
	return ids
}

// released is the outcome of a release: the ids released (or not found).
type released struct{ ids []string }

// releaseOp releases ids (and rewrites the version of the allocations in retag) with
// subjects.RPCRelease.
func (r *runner) releaseOp(ids []string, retag map[string]*controllerv1.Target) func(ctx context.Context) (any, error) {
	return func(ctx context.Context) (any, error) {
		for _, t := range retag {
			if err := r.retag(ctx, t); err != nil {
				return nil, err
			}
		}
		if len(ids) == 0 {
			return &released{}, nil
		}
		req := &inventoryv1.ReleaseRequest{AllocationIds: ids}
		reply := &inventoryv1.ReleaseReply{}
		rctx, cancel := context.WithTimeout(ctx, releaseRequestTimeout)
		defer cancel()
		if err := r.e.bus.Request(rctx, subjects.RPCRelease, req, reply, natsbus.WithServicePath(r.service)); err != nil {
			if errors.Is(err, natsbus.ErrNoResponders) {
				return nil, infraErr("release allocations: the scheduler is unreachable (no responder on %s)", subjects.RPCRelease)
			}
			return nil, infraErr("release allocations: %v", err)
		}
		return &released{ids: ids}, nil
	}
}

// releaseAll releases every allocation of the deployment (a placement whose reply was
// never recorded).
func (r *runner) releaseAll(ctx context.Context) (any, error) {
	req := &inventoryv1.ReleaseRequest{DeploymentId: r.id}
	reply := &inventoryv1.ReleaseReply{}
	rctx, cancel := context.WithTimeout(ctx, releaseRequestTimeout)
	defer cancel()
	if err := r.e.bus.Request(rctx, subjects.RPCRelease, req, reply, natsbus.WithServicePath(r.service)); err != nil {
		return nil, infraErr("release the allocations of %s: %v", r.id, err)
	}
	return &released{ids: reply.GetReleased()}, nil
}

// retag records, after a rollback, the version that runs on an allocation: the allocation
// node is rewritten with its host's guard (as every writer of /berth/alloc/<host>/ must),
// compared on both mod revisions, so that a concurrent scheduler write wins and the retag
// is tried again.
func (r *runner) retag(ctx context.Context, t *controllerv1.Target) error {
	for try := 0; try < 5; try++ {
		an, err := r.e.coord.Get(ctx, model.AllocPath(t.GetHost(), t.GetAllocation()))
		if errors.Is(err, coordclient.ErrNotFound) {
			return nil
		}
		if err != nil {
			return infraErr("read allocation %s: %v", t.GetAllocation(), err)
		}
		a := &inventoryv1.Allocation{}
		if err := model.Unmarshal(an.Value, a); err != nil {
			return nil
		}
		if a.GetVersion() == r.dep.GetPreviousVersion() {
			return nil
		}
		gn, err := r.e.coord.Get(ctx, model.AllocGuardPath(t.GetHost()))
		if err != nil {
			return infraErr("read the allocation guard of %s: %v", t.GetHost(), err)
		}
		a.Version = r.dep.GetPreviousVersion()
		b, err := model.Marshal(a)
		if err != nil {
			return err
		}
		res, err := r.e.lead.Txn().If(coordclient.ModRev(an.Path).Equal(an.ModRev), coordclient.ModRev(gn.Path).Equal(gn.ModRev)).
			Then(coordclient.OpPut(an.Path, b), coordclient.OpPut(gn.Path, gn.Value)).Commit(ctx)
		if err != nil {
			if errors.Is(err, coordclient.ErrFenced) {
				return err
			}
			return infraErr("record the version of allocation %s: %v", t.GetAllocation(), err)
		}
		if res.Succeeded {
			return nil
		}
	}
	return infraErr("record the version of allocation %s: its host's allocations kept changing", t.GetAllocation())
}

// cleanup is recordReleases of a container deployment: once it has ended, its terminal
// state is recorded and nothing is out, it releases the allocations it no longer needs
// and records the version the rolled-back allocations run.
func (r *runner) cleanup(now time.Time) {
	if r.st.GetReleasesRecorded() || r.hardHeader || r.inFlight() > 0 || r.ctr.busy != "" {
		return
	}
	if at := r.st.GetStageRetryAt(); r.st.GetStage() == StageCleanup && at != nil && now.Before(at.AsTime()) {
		return
	}
	ended := r.st.GetStage()
	if ended != StageCleanup {
		r.st.Stage, r.st.StageRetries, r.st.StageRetryAt = StageCleanup, 0, nil
		r.touchHeader()
	}
	if len(r.dep.GetAllocations()) == 0 {
		// A placement may have been committed without its reply being recorded, unless the
		// run ended before its placement stage, or every placement request of this
		// leadership is known to have committed nothing.
		knownNothing := ended == StageImage || (ended == StagePlacement && r.ctr.placeAttempts > 0 && !r.ctr.placeMaybe)
		if slices.Contains(r.dep.GetStages(), StagePlacement) && r.dep.GetReplacement() == nil && !knownNothing {
			r.runOp(StageCleanup, r.releaseAll)
			return
		}
		r.st.ReleasesRecorded = true
		r.touchHeader()
		return
	}
	retag := map[string]*controllerv1.Target{}
	if r.dep.GetPreviousImage() != "" {
		for _, t := range r.targets {
			if !t.GetRetire() && t.GetRollback() == model.TargetSucceeded {
				retag[t.GetAllocation()] = t
			}
		}
	}
	ids := r.toRelease(true)
	if len(ids) == 0 && len(retag) == 0 {
		r.st.ReleasesRecorded = true
		r.touchHeader()
		return
	}
	r.runOp(StageCleanup, r.releaseOp(ids, retag))
}

// onReleased takes the outcome of a release (after a batch's retirement, or cleanup).
func (r *runner) onReleased(now time.Time, m msgOp) {
	if m.err != nil {
		if errors.Is(m.err, coordclient.ErrFenced) {
			r.e.markLost(m.err)
			return
		}
		r.e.log.Warn("release allocations", "id", r.id, "err", m.err)
		r.st.StageRetries++
		if r.st.GetStageRetries() > r.strat.GetInfraRetries() {
			r.st.StageRetries, r.st.StageRetryAt = 0, nil
			if m.stage == StageCleanup {
				r.st.ReleasesRecorded = true
				r.st.Message += "; allocations not released: " + m.err.Error()
			} else {
				// The rollout goes on; cleanup tries again once the deployment has ended.
				r.ctr.deferRelease = true
			}
			r.touchHeader()
			return
		}
		r.st.StageRetryAt = ts(now.Add(r.backoff(r.st.GetStageRetries())))
		r.touchHeader()
		return
	}
	res, _ := m.res.(*released)
	done := map[string]bool{}
	if res != nil {
		for _, id := range res.ids {
			done[id] = true
		}
	}
	for i, t := range r.targets {
		if done[t.GetAllocation()] && !t.GetReleased() {
			t.Released = true
			r.touchHard(i)
		}
	}
	r.st.StageRetries, r.st.StageRetryAt = 0, nil
	if m.stage == StageCleanup {
		r.st.ReleasesRecorded = true
	}
	r.touchHeader()
	r.again = true
}
