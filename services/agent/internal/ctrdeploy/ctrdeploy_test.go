package ctrdeploy

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/services/agent/internal/docker"
	"github.com/berthdev/berth/services/agent/internal/instances"
	"github.com/berthdev/berth/services/agent/internal/plugin"
)

// outcome is how a step error ends the step: ok, retryable/infrastructure,
// failed/application, failed/infrastructure.
func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	var se *plugin.StepError
	if !errors.As(err, &se) {
		return "failed/application"
	}
	state := "failed"
	if se.State == agentv1.StepState_STEP_STATE_RETRYABLE {
		state = "retryable"
	}
	class := "application"
	if se.Class == agentv1.FailureClass_FAILURE_CLASS_INFRASTRUCTURE {
		class = "infrastructure"
	}
	return state + "/" + class
}

func wantOutcome(t *testing.T, what string, err error, want string) {
	t.Helper()
	if got := outcome(err); got != want {
		t.Fatalf("%s: got %s (%v), want %s", what, got, err, want)
	}
}

// TestDeployReplaceStop deploys an allocation (container running at its address with its
// limits, labels and a hardened host config; instance registered; the app answers from the
// host), deploys it again (nothing done twice), replaces it with another image (same
// address, instance drained first), and stops it, twice.
func TestDeployReplaceStop(t *testing.T) {
	requireEnv(t)
	net := newNet(t)
	h := newHost(t, net)
	alloc := allocation(t, "web")
	name := ContainerName(alloc)
	ip := net.prefix + "10"
	addr := fmt.Sprintf("%s:%d", ip, appPort)
	instPath := instances.Path("test/web", InstanceID(hostID, alloc))

	out, err := h.run(ActionDeploy, h.deployArgs("v1", alloc, 10))
	wantOutcome(t, "deploy v1", err, "ok")
	if !strings.Contains(out, "pulling ") {
		t.Errorf("deploy v1 output: got %q, want the image pulled", out)
	}
	c := inspect(t, name)
	if c == nil || !c.State.Running {
		t.Fatalf("container %s after the deploy: got %+v, want running", name, c)
	}
	if got := c.NetworkSettings.Networks[net.name].IPAddress; got != ip {
		t.Errorf("container address on %s: got %q, want %s", net.name, got, ip)
	}
	if c.HostConfig.NanoCpus != 250_000_000 || c.HostConfig.Memory != 64<<20 {
		t.Errorf("limits: got NanoCpus %d Memory %d, want 250000000 and %d", c.HostConfig.NanoCpus, c.HostConfig.Memory, 64<<20)
	}
	wantLabels := map[string]string{LabelService: "test/web", LabelVersion: "v1", LabelDeployment: "d-v1", LabelAllocation: alloc,
		LabelImage: fx.images["v1"], LabelManaged: "true", LabelHost: hostID}
	for k, v := range wantLabels {
		if got := c.Config.Labels[k]; got != v {
			t.Errorf("label %s: got %q, want %q", k, got, v)
		}
	}
	checkHardened(t, c, net.name)
	n := h.waitNode(instPath, true, time.Second)
	if n.GetIp() != ip || n.GetPort() != appPort || n.GetHost() != hostID || n.GetVersion() != "v1" {
		t.Errorf("instance node: got %v, want %s:%d of host %s version v1", n, ip, appPort, hostID)
	}
	if body, err := get(addr); err != nil || body != "v1" {
		t.Errorf("GET %s from the host: got %q, %v; want v1", addr, body, err)
	}

	// The same step again: the container is not touched.
	writes := len(h.reg.history())
	out, err = h.run(ActionDeploy, h.deployArgs("v1", alloc, 10))
	wantOutcome(t, "deploy v1 again", err, "ok")
	c2 := inspect(t, name)
	if c2.ID != c.ID || c2.State.StartedAt != c.State.StartedAt {
		t.Errorf("container after the repeated deploy: got %s started %s, want %s started %s (untouched)", c2.ID, c2.State.StartedAt, c.ID, c.State.StartedAt)
	}
	if !strings.Contains(out, "already runs") {
		t.Errorf("repeated deploy output: got %q, want it to say the container already runs", out)
	}
	if got := len(h.reg.history()); got != writes {
		t.Errorf("instance writes during the repeated deploy: got %d, want none", got-writes)
	}

	// Another image on the same allocation: replaced in place, same address.
	_, err = h.run(ActionDeploy, h.deployArgs("v2", alloc, 10))
	wantOutcome(t, "deploy v2", err, "ok")
	c3 := inspect(t, name)
	if c3 == nil || c3.ID == c.ID || !c3.State.Running {
		t.Fatalf("container after the replacement: got %+v, want a new running container", c3)
	}
	if got := c3.NetworkSettings.Networks[net.name].IPAddress; got != ip {
		t.Errorf("address after the replacement: got %q, want %s", got, ip)
	}
	if c3.Config.Labels[LabelVersion] != "v2" {
		t.Errorf("version label: got %q, want v2", c3.Config.Labels[LabelVersion])
	}
	if inspect(t, c.ID) != nil {
		t.Errorf("the v1 container %s still exists after the replacement", c.ID)
	}
	hist := h.reg.history()[writes:]
	if len(hist) < 3 || !strings.Contains(hist[0], "DRAINING") || !strings.HasPrefix(hist[1], "delete ") || !strings.HasPrefix(hist[2], "put ") {
		t.Errorf("instance writes during the replacement: got %q, want a draining put, a delete, then the new registration", hist)
	}
	if n := h.waitNode(instPath, true, time.Second); n.GetVersion() != "v2" || n.GetIp() != ip {
		t.Errorf("instance node after the replacement: got %v, want v2 at %s", n, ip)
	}
	if body, err := get(addr); err != nil || body != "v2" {
		t.Errorf("GET %s after the replacement: got %q, %v; want v2", addr, body, err)
	}

	// Status lists it, healthy.
	out, err = h.run(ActionStatus, map[string]string{"service": "test/web"})
	wantOutcome(t, "status", err, "ok")
	var st []ContainerStatus
	if err := json.Unmarshal([]byte(out[strings.LastIndex(out, "\n")+1:]), &st); err != nil {
		t.Fatalf("status output %q: %v", out, err)
	}
	i := slices.IndexFunc(st, func(s ContainerStatus) bool { return s.Allocation == alloc })
	if i < 0 || st[i].IP != ip || st[i].State != "running" || !st[i].Healthy || st[i].Version != "v2" {
		t.Errorf("status: got %+v, want %s running healthy v2 at %s", st, alloc, ip)
	}

	// Stop: drained, removed; again: nothing to do.
	_, err = h.run(ActionStop, map[string]string{"service": "test/web", "allocation": alloc})
	wantOutcome(t, "stop", err, "ok")
	if c := inspect(t, name); c != nil {
		t.Errorf("container after the stop: got %s %s, want none", c.ID, c.State.Status)
	}
	h.waitNode(instPath, false, time.Second)
	out, err = h.run(ActionStop, map[string]string{"service": "test/web", "allocation": alloc})
	wantOutcome(t, "stop again", err, "ok")
	if !strings.Contains(out, "nothing to stop") {
		t.Errorf("second stop output: got %q, want nothing to stop", out)
	}
}

// checkHardened checks the host config the engine reports for a container of the plugin.
func checkHardened(t *testing.T, c *inspected, network string) {
	t.Helper()
	hc := c.HostConfig
	if hc.Privileged {
		t.Errorf("Privileged: got true")
	}
	if !slices.Equal(hc.CapDrop, []string{"ALL"}) {
		t.Errorf("CapDrop: got %v, want [ALL]", hc.CapDrop)
	}
	if len(hc.CapAdd) != 0 {
		t.Errorf("CapAdd: got %v, want none (the default allow-list is empty)", hc.CapAdd)
	}
	if !slices.ContainsFunc(hc.SecurityOpt, func(s string) bool {
		return strings.HasPrefix(s, "no-new-privileges") && !strings.HasSuffix(s, "false")
	}) {
		t.Errorf("SecurityOpt: got %v, want no-new-privileges", hc.SecurityOpt)
	}
	if hc.NetworkMode != network {
		t.Errorf("NetworkMode: got %q, want %q", hc.NetworkMode, network)
	}
	for _, m := range []struct{ name, v string }{{"PidMode", hc.PidMode}, {"UTSMode", hc.UTSMode}, {"UsernsMode", hc.UsernsMode}} {
		if m.v != "" {
			t.Errorf("%s: got %q, want the container's own namespace", m.name, m.v)
		}
	}
	if hc.IpcMode == "host" || strings.HasPrefix(hc.IpcMode, "container:") {
		t.Errorf("IpcMode: got %q, want private", hc.IpcMode)
	}
	if len(hc.Binds) != 0 || len(hc.Mounts) != 0 || len(hc.VolumesFrom) != 0 || len(hc.Devices) != 0 || len(c.Mounts) != 0 {
		t.Errorf("mounts: got binds %v mounts %v volumes-from %v devices %v container mounts %v, want none", hc.Binds, hc.Mounts, hc.VolumesFrom, hc.Devices, c.Mounts)
	}
	for _, b := range hc.Binds {
		if strings.Contains(b, "docker.sock") {
			t.Errorf("the Docker socket is mounted: %s", b)
		}
	}
	if hc.PidsLimit == nil || *hc.PidsLimit != docker.PidsLimit {
		t.Errorf("PidsLimit: got %v, want %d", hc.PidsLimit, docker.PidsLimit)
	}
	if hc.Init == nil || !*hc.Init {
		t.Errorf("Init: got %v, want true", hc.Init)
	}
	if hc.RestartPolicy.Name != "unless-stopped" {
		t.Errorf("RestartPolicy: got %q, want unless-stopped", hc.RestartPolicy.Name)
	}
	if c.Config.WorkingDir != AppDir || len(c.Config.Entrypoint) < 3 || c.Config.Entrypoint[0] != "/bin/sh" || !slices.Equal(c.Config.Cmd, []string{"bin/start", "bin/stop"}) {
		t.Errorf("command: got entrypoint %q cmd %q in %q, want the supervisor running bin/start in /app", c.Config.Entrypoint, c.Config.Cmd, c.Config.WorkingDir)
	}
}

// TestHealthNeverPasses: a container whose health never passes within the deadline is
// removed, nothing is registered, and the step fails as the application's fault.
func TestHealthNeverPasses(t *testing.T) {
	requireEnv(t)
	net := newNet(t)
	h := newHost(t, net)
	alloc := allocation(t, "sick")
	args := h.deployArgs("sick", alloc, 11)
	args["health_deadline"] = "2500ms"
	start := time.Now()
	_, err := h.run(ActionDeploy, args)
	wantOutcome(t, "deploy sick", err, "failed/application")
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("deploy took %s, want about the 2.5s health deadline", took)
	}
	if !strings.Contains(err.Error(), "health did not pass") || !strings.Contains(err.Error(), "not ready") {
		t.Errorf("error: got %q, want the health failure with the script's last line", err)
	}
	if !strings.Contains(err.Error(), "the container was removed") {
		t.Errorf("error: got %q, want it to say the container was removed", err)
	}
	if c := inspect(t, ContainerName(alloc)); c != nil {
		t.Errorf("container after the failed deploy: got %s %s, want none", c.ID, c.State.Status)
	}
	if ops := h.reg.history(); len(ops) != 0 {
		t.Errorf("instance writes: got %q, want none", ops)
	}
	if _, ok := h.inst.Lookup("test/web", InstanceID(hostID, alloc)); ok {
		t.Errorf("the instance manager still has the failed allocation's instance")
	}
}

// TestBadArguments: refused steps create no container (not even a descriptor reader) and
// register nothing; an unreachable registry or engine is retryable.
func TestBadArguments(t *testing.T) {
	requireEnv(t)
	net := newNet(t)
	h := newHost(t, net)
	alloc := allocation(t, "bad")
	with := func(k, v string) map[string]string {
		a := h.deployArgs("v1", alloc, 12)
		if v == "" {
			delete(a, k)
		} else {
			a[k] = v
		}
		return a
	}
	tag := strings.Split(fx.images["v1"], "@")[0] + ":latest"
	tests := []struct {
		name string
		args map[string]string
		want string // in the error
	}{
		{"unknown argument", with("cpus", "1"), "unknown argument(s) cpus"},
		{"no image", with("image", ""), "argument image is required"},
		{"image by tag", with("image", tag), "not pinned by digest"},
		{"bad digest", with("image", "127.0.0.1:5000/x@sha256:1234"), "argument image"},
		{"no ip", with("ip", ""), "argument ip is required"},
		{"bad ip", with("ip", "10.0.0.300"), "argument ip"},
		{"ip off the network", with("ip", "192.0.2.10"), "not on the container network"},
		{"loopback ip", with("ip", "127.0.0.5"), "unicast address"},
		{"cpu 0", with("cpu_millis", "0"), "argument cpu_millis"},
		{"cpu not a number", with("cpu_millis", "0.5"), "argument cpu_millis"},
		{"memory below Docker's minimum", with("memory_bytes", "1048576"), "argument memory_bytes"},
		{"allocation not a label", with("allocation", "A_1"), "argument allocation"},
		{"no deployment", with("deployment", ""), "argument deployment is required"},
		{"bad version", with("version", "-x"), "argument version"},
		{"bad service", with("service", "Test/Web"), "argument service"},
		{"bad health deadline", with("health_deadline", "soon"), "argument health_deadline"},
		{"image without berth.yaml", with("image", fx.images["nodesc"]), "has no /app/berth.yaml"},
		{"image of another service", with("image", fx.images["other"]), `of service "test/other"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.run(ActionDeploy, tt.args)
			wantOutcome(t, tt.name, err, "failed/application")
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error: got %q, want it to contain %q", err, tt.want)
			}
			if c := inspect(t, ContainerName(alloc)); c != nil {
				t.Errorf("a container exists after a refused deploy: %s", c.ID)
			}
		})
	}
	for _, args := range []map[string]string{{"service": "test/web"}, {"allocation": alloc}, {"service": "test/web", "allocation": alloc, "x": "1"}} {
		_, err := h.run(ActionStop, args)
		wantOutcome(t, fmt.Sprintf("stop %v", args), err, "failed/application")
	}
	if readers, _ := dockerCLI("ps", "-aq", "--filter", "label="+LabelReader); readers != "" {
		t.Errorf("descriptor readers left: %s", readers)
	}
	if ops := h.reg.history(); len(ops) != 0 {
		t.Errorf("instance writes: got %q, want none", ops)
	}

	// A registry that does not answer: retryable.
	_, err := h.run(ActionDeploy, with("image", "127.0.0.1:1/berth-agent-test/none@sha256:"+strings.Repeat("ab", 32)))
	wantOutcome(t, "deploy from a registry that does not answer", err, "retryable/infrastructure")

	// An engine that does not answer: retryable.
	down, err := docker.New("unix:///nonexistent/docker.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	p, err := New(Config{Host: hostID, Engine: down, Network: net.name, Instances: h.inst})
	if err != nil {
		t.Fatal(err)
	}
	out := plugin.NewOutput(nil, 0)
	err = p.Run(t.Context(), plugin.Request{Action: ActionDeploy, Arguments: h.deployArgs("v1", alloc, 12)}, plugin.Writers{Stdout: out.Stdout(), Stderr: out.Stderr()})
	wantOutcome(t, "deploy with the engine down", err, "retryable/infrastructure")
}

// TestAdopt: a new agent (a new plugin and instance manager) finds the running container,
// registers its instance once its health passes, and never restarts it.
func TestAdopt(t *testing.T) {
	requireEnv(t)
	net := newNet(t)
	h1 := newHost(t, net)
	alloc := allocation(t, "adopt")
	_, err := h1.run(ActionDeploy, h1.deployArgs("v1", alloc, 13))
	wantOutcome(t, "deploy", err, "ok")
	before := inspect(t, ContainerName(alloc))

	h2 := newHost(t, net)
	if err := h2.p.Adopt(t.Context()); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	path := instances.Path("test/web", InstanceID(hostID, alloc))
	n := h2.waitNode(path, true, 10*time.Second)
	if n.GetIp() != net.prefix+"13" || n.GetPort() != appPort || n.GetVersion() != "v1" {
		t.Errorf("adopted instance: got %v, want v1 at %s13:%d", n, net.prefix, appPort)
	}
	after := inspect(t, ContainerName(alloc))
	if after.ID != before.ID || after.State.StartedAt != before.State.StartedAt {
		t.Errorf("container after the adoption: got %s started %s, want %s started %s (not restarted)", after.ID, after.State.StartedAt, before.ID, before.State.StartedAt)
	}
	// A deploy of the same image through the new plugin now does nothing.
	out, err := h2.run(ActionDeploy, h2.deployArgs("v1", alloc, 13))
	wantOutcome(t, "deploy after the adoption", err, "ok")
	if !strings.Contains(out, "already runs") {
		t.Errorf("deploy after the adoption: got %q, want the container found running", out)
	}
	if c := inspect(t, ContainerName(alloc)); c.State.StartedAt != before.State.StartedAt {
		t.Errorf("container restarted by the deploy after the adoption")
	}
}

func TestCheckCaps(t *testing.T) {
	got, err := CheckCaps([]string{"net_bind_service", "CAP_CHOWN", "CHOWN"})
	if err != nil || !slices.Equal(got, []string{"CHOWN", "NET_BIND_SERVICE"}) {
		t.Errorf("CheckCaps: got %v, %v; want [CHOWN NET_BIND_SERVICE]", got, err)
	}
	for _, c := range []string{"SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "ALL", "bogus"} {
		if _, err := CheckCaps([]string{c}); err == nil {
			t.Errorf("CheckCaps(%s): got nil error, want it refused", c)
		}
	}
}
