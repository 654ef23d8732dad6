package engine

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berthdev/berth/pkg/coordclient"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/services/task-controller/internal/model"
	"github.com/berthdev/berth/services/task-controller/internal/strategy"
)

// The health gate's last condition (DESIGN §2, step 5): a deployed target counts as
// succeeded only once its new instance is registered and healthy in the name service —
// the instance node /berth/instances/<service path>/<id> the host's agent keeps in its
// coord session — not just once the health script passed on the host. The check is a
// read of coord (the name service's own source), polled every instancePoll until the
// health gate's deadline. An agent that keeps no coord session (/berth/alive/<host> is
// absent: it runs without coord, so it registers nothing) is not waited for; the target's
// message says so.
const (
	instancesPrefix = "/berth/instances/"
	alivePrefix     = "/berth/alive/"
	instancePoll    = 250 * time.Millisecond
)

// gateInstance starts the name-service part of the health gate for target i, whose deploy
// (and, with min_healthy_time, its second health check) passed; okMessage is the message a
// succeeded target keeps.
func (r *runner) gateInstance(now time.Time, i int, okMessage string) {
	v := &r.vols[i]
	v.instanceWait = true
	v.instanceDeadline = now.Add(r.healthDeadline())
	v.okMessage = okMessage
	r.checkInstance(now, i)
}

// checkInstance ends target i when its instance is healthy in the name service (or its
// agent registers none), fails it when the health gate's deadline passed, and otherwise
// checks again after instancePoll.
func (r *runner) checkInstance(now time.Time, i int) {
	t := r.targets[i]
	v := &r.vols[i]
	ok, why := r.instanceHealthy(t.GetHost(), t.GetIp())
	switch {
	case ok:
		v.instanceWait = false
		msg := v.okMessage
		if why != "" {
			msg = strings.TrimSuffix(msg+"; "+why, "; ")
		}
		r.endTarget(now, i, model.TargetSucceeded, "", msg)
	case !now.Before(v.instanceDeadline):
		v.instanceWait = false
		r.endTarget(now, i, model.TargetFailed, model.ClassApplication,
			fmt.Sprintf("deployed, but not healthy in the name service within the health gate's %s: %s", r.healthDeadline(), why))
	default:
		t.HealthCheckAt = ts(now.Add(instancePoll))
		if msg := "deployed; waiting for its instance to be healthy in the name service: " + why; t.GetMessage() != msg {
			t.Message = msg
			r.touch(i)
		}
	}
}

// instanceHealthy reports whether host has an active, healthy instance of the deployed
// version registered (at ip, when ip is set: a container's address), and why not (or a
// note when the host's agent registers nothing). It reads the runner's gateView, so that a
// batch of thousands of targets costs a few coord reads, not one per target.
func (r *runner) instanceHealthy(host, ip string) (bool, string) {
	g, err := r.gateView()
	if err != nil {
		return false, err.Error()
	}
	if !g.alive[host] {
		return true, "no name-service check: the agent of " + host + " keeps no coord session"
	}
	version := r.dep.GetVersion()
	why := fmt.Sprintf("no instance of %s %s is registered on %s yet", r.service, version, host)
	if ip != "" {
		why = fmt.Sprintf("no instance of %s %s is registered at %s on %s yet", r.service, version, ip, host)
	}
	for _, in := range g.instances[host] {
		if in.GetVersion() != version || (ip != "" && in.GetIp() != ip) {
			continue
		}
		h := in.GetHealth()
		if in.GetState() != namesv1.InstanceState_INSTANCE_STATE_DRAINING &&
			(h == namesv1.Health_HEALTH_HEALTHY || h == namesv1.Health_HEALTH_UNSPECIFIED) {
			return true, ""
		}
		why = fmt.Sprintf("instance %s is %s, %s", in.GetId(),
			strings.ToLower(strings.TrimPrefix(in.GetState().String(), "INSTANCE_STATE_")),
			strings.ToLower(strings.TrimPrefix(h.String(), "HEALTH_")))
	}
	return false, why
}

// gateView is what the health gate reads of coord: the hosts whose agents keep a session
// and the service's instances by host, at most gateViewAge old.
type gateView struct {
	at        time.Time
	alive     map[string]bool
	instances map[string][]*namesv1.Instance
}

// gateViewAge bounds how stale the gate's view may be. Results of one batch arrive within
// milliseconds of each other and share one read; a target whose instance registered just
// after the read is checked again instancePoll later.
const gateViewAge = 20 * time.Millisecond

// gateView returns the runner's view, read again when older than gateViewAge.
func (r *runner) gateView() (*gateView, error) {
	if r.gate != nil && time.Since(r.gate.at) < gateViewAge {
		return r.gate, nil
	}
	g := &gateView{at: time.Now(), alive: map[string]bool{}, instances: map[string][]*namesv1.Instance{}}
	alive, err := r.e.coord.List(r.ctx, strings.TrimSuffix(alivePrefix, "/"), coordclient.KeysOnly())
	if err != nil && !errors.Is(err, coordclient.ErrNotFound) {
		return nil, fmt.Errorf("read the agents' presence: %w", err)
	}
	if alive != nil {
		for _, n := range alive.Nodes {
			g.alive[n.Path[strings.LastIndexByte(n.Path, '/')+1:]] = true
		}
	}
	res, err := r.e.coord.List(r.ctx, instancesPrefix+r.service)
	if err != nil && !errors.Is(err, coordclient.ErrNotFound) {
		return nil, fmt.Errorf("read the instances of %s: %w", r.service, err)
	}
	if res != nil {
		for _, n := range res.Nodes {
			in := &namesv1.Instance{}
			if n.Version == 0 || model.Unmarshal(n.Value, in) != nil {
				continue
			}
			g.instances[in.GetHost()] = append(g.instances[in.GetHost()], in)
		}
	}
	r.gate = g
	return g, nil
}

// healthDeadline is the health gate's deadline, or its default.
func (r *runner) healthDeadline() time.Duration {
	if d := r.strat.GetHealthGate().GetDeadline().AsDuration(); d > 0 {
		return d
	}
	return strategy.DefaultHealthDeadline
}
