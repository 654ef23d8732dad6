package agent_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/config"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	"github.com/berthdev/berth/services/agent"
)

// dockerHost returns the engine's address when one answers /_ping, else skips the test.
func dockerHost(t *testing.T) string {
	t.Helper()
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	u, err := url.Parse(host)
	if err != nil || u.Scheme != "unix" {
		t.Skipf("DOCKER_HOST %q: the test only dials unix sockets", host)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", u.Path)
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Skipf("no Docker engine at %s: %v", host, err)
	}
	resp.Body.Close()
	return host
}

// TestContainerDeployWired: with an engine that answers, the agent runs the built-in
// container-deploy plugin (its status action answers over NATS, a bad deploy is refused as
// the application's fault); with containers.enabled false it does not know it.
func TestContainerDeployWired(t *testing.T) {
	host := dockerHost(t)
	h := newHarness(t)
	cfg := h.config()
	cfg.Containers.DockerHost = host // docker_host is "-" in the harness: no fingerprint check
	cfg.Containers.Network = "berth-agent-test-none"
	stop := h.start(cfg)
	w := h.watch("task-c")

	req := h.request("task-c", "s1", "container-deploy", "status", map[string]string{"service": "test/none"})
	if r := h.send(req); r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_ACCEPTED {
		t.Fatalf("status: got %v %q, want accepted", r.GetDisposition(), r.GetReason())
	}
	res := w.result(t, 30*time.Second)
	if res.GetState() != agentv1.StepState_STEP_STATE_OK {
		t.Fatalf("status: got %v %q, want ok", res.GetState(), res.GetMessage())
	}
	out := res.GetOutput()
	var list []map[string]any
	if len(out) == 0 || json.Unmarshal([]byte(out[len(out)-1]), &list) != nil || len(list) != 0 {
		t.Errorf("status output: got %q, want an empty JSON list", out)
	}

	req = h.request("task-c", "s2", "container-deploy", "deploy", map[string]string{"service": "test/none", "image": "x"})
	h.send(req)
	res = w.result(t, 30*time.Second)
	if res.GetState() != agentv1.StepState_STEP_STATE_FAILED || res.GetFailureClass() != agentv1.FailureClass_FAILURE_CLASS_APPLICATION ||
		!strings.Contains(res.GetMessage(), "argument") {
		t.Errorf("bad deploy: got %v %v %q, want failed/application naming the argument", res.GetState(), res.GetFailureClass(), res.GetMessage())
	}
	stop()

	cfg.Containers.Enabled = "false"
	h.start(cfg)
	r := h.send(h.request("task-c2", "s1", "container-deploy", "status", nil))
	if r.GetDisposition() != agentv1.StepDisposition_STEP_DISPOSITION_REJECTED || r.GetRejectReason() != agentv1.RejectReason_REJECT_REASON_UNKNOWN_PLUGIN {
		t.Errorf("status with containers off: got %v %v, want rejected unknown_plugin", r.GetDisposition(), r.GetRejectReason())
	}
}

func TestContainersConfigFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.yaml")
	body := "host_id: h\ncontainers:\n  enabled: true\n  network: apps\n  cap_allow: [net_bind_service, CAP_CHOWN]\n  stop_timeout: 3s\n"
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	c := agent.DefaultConfig()
	err := config.Load(&c, []string{"--config", file}, config.Options{LookupEnv: func(k string) (string, bool) {
		if k == "BERTH_CONTAINERS_DOCKER_HOST" {
			return "tcp://127.0.0.1:2375", true
		}
		return "", false
	}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Containers.Enabled != "true" || c.Containers.Network != "apps" || strings.Join(c.Containers.CapAllow, ",") != "CHOWN,NET_BIND_SERVICE" ||
		c.Containers.StopTimeout != 3*time.Second || c.Containers.DockerHost != "tcp://127.0.0.1:2375" {
		t.Errorf("containers: got %+v", c.Containers)
	}
	if d := agent.DefaultConfig(); d.Containers.Enabled != "auto" || d.Containers.Network != "berth" {
		t.Errorf("defaults: got %+v, want auto on network berth", d.Containers)
	}
}
