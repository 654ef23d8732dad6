package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/berthdev/berth/pkg/config"
	"github.com/berthdev/berth/services/agent"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(c *agent.Config)
		wantErr string
	}{
		{"defaults", func(c *agent.Config) {}, ""},
		{"host with a dot", func(c *agent.Config) { c.HostID = "h.1" }, "host_id"},
		{"reserved host", func(c *agent.Config) { c.HostID = "progress" }, "reserved"},
		{"relative plugin dir", func(c *agent.Config) { c.PluginDirs = []string{"plugins"} }, "plugin_dirs[0]"},
		{"bad coord", func(c *agent.Config) { c.Coord = "nohostport" }, "coord: endpoint"},
		{"no nats", func(c *agent.Config) { c.NATS = " , " }, "nats: empty"},
		{"no slots", func(c *agent.Config) { c.MaxConcurrentSteps = 0 }, "max_concurrent_steps"},
		{"max below default", func(c *agent.Config) { c.MaxStepTimeout = time.Second }, "max_step_timeout"},
		{"one release", func(c *agent.Config) { c.Deploy.KeepReleases = 1 }, "deploy.keep_releases"},
		{"short retention", func(c *agent.Config) { c.JournalRetention = time.Minute }, "journal_retention"},
		{"bad log level", func(c *agent.Config) { c.Log.Level = "loud" }, "log level"},
		{"bad advertise ip", func(c *agent.Config) { c.AdvertiseIP = "10.0.0" }, "advertise_ip"},
		{"bad dns listen", func(c *agent.Config) { c.DNSListen = "5300" }, "dns_listen"},
		{"dns listen on a name", func(c *agent.Config) { c.DNSListen = "example.com:53" }, "dns_listen"},
		{"bad name api listen", func(c *agent.Config) { c.NameAPIListen = "x" }, "name_api_listen"},
		{"bad zone", func(c *agent.Config) { c.DNS.Zones = []string{"a..b"} }, "dns.zones[0]"},
		{"no zone", func(c *agent.Config) { c.DNS.Zones = nil }, "dns.zones"},
		{"bad upstream", func(c *agent.Config) { c.DNS.Upstreams = []string{"dns.google"} }, "dns.upstreams[0]"},
		{"upstream with port", func(c *agent.Config) { c.DNS.Upstreams = []string{"10.0.0.53:5353"} }, ""},
		{"empty cache", func(c *agent.Config) { c.DNS.CacheSize = 0 }, "dns.cache_size"},
		{"flap zero", func(c *agent.Config) { c.Health.FlapChanges = 0 }, "health.flap_changes"},
		{"flapping off", func(c *agent.Config) { c.Health.FlapChanges = -1 }, ""},
		{"short flap window", func(c *agent.Config) { c.Health.FlapWindow = time.Millisecond }, "health.flap_window"},
		{"negative drain", func(c *agent.Config) { c.Drain.MaxWait = -time.Second }, "drain.max_wait"},
		{"once without template", func(c *agent.Config) { c.Once, c.DryRun = true, true }, "--once needs --template"},
		{"once without dry run", func(c *agent.Config) { c.Once, c.Template = true, "/t.tmpl" }, "--once needs --dry-run"},
		{"daemon defaults", func(c *agent.Config) { d := agent.DaemonConfig(); d.HostID = "h1"; *c = d }, ""},
		{"containers on", func(c *agent.Config) { c.Containers.Enabled = "on" }, ""},
		{"containers on without engine", func(c *agent.Config) { c.Containers.Enabled, c.DockerHost = "true", "-" }, "containers.enabled"},
		{"containers maybe", func(c *agent.Config) { c.Containers.Enabled = "maybe" }, "containers.enabled"},
		{"containers on the host network", func(c *agent.Config) { c.Containers.Network = "host" }, "containers.network"},
		{"containers network name", func(c *agent.Config) { c.Containers.Network = "a/b" }, "containers.network"},
		{"containers grantable cap", func(c *agent.Config) { c.Containers.CapAllow = []string{"net_bind_service"} }, ""},
		{"containers sys_admin", func(c *agent.Config) { c.Containers.CapAllow = []string{"SYS_ADMIN"} }, "containers.cap_allow"},
		{"containers docker host", func(c *agent.Config) { c.Containers.DockerHost = "/var/run/docker.sock" }, "containers.docker_host"},
		{"containers stop timeout", func(c *agent.Config) { c.Containers.StopTimeout = 0 }, "containers.stop_timeout"},
	}
	for _, tc := range tests {
		c := agent.DefaultConfig()
		c.HostID = "h1"
		tc.mod(&c)
		err := c.Validate()
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.wantErr)
		}
	}
}

func TestConfigLoadOrder(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte("host_id: from-file\ndc: dc1\nplugin_dirs: [/opt/a]\ndeploy:\n  keep_releases: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"BERTH_DC": "dc2", "BERTH_MAX_CONCURRENT_STEPS": "7"}
	c := agent.DefaultConfig()
	err := config.Load(&c, []string{"--config", file, "--plugin-dir", "/opt/b", "--plugin-dir", "/opt/c", "--data-dir", "/srv/agent"},
		config.Options{LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }})
	if err != nil {
		t.Fatal(err)
	}
	if c.HostID != "from-file" || c.DC != "dc2" || c.MaxConcurrentSteps != 7 || c.Deploy.KeepReleases != 3 ||
		strings.Join(c.PluginDirs, ",") != "/opt/b,/opt/c" || c.DataDir != "/srv/agent" {
		t.Errorf("loaded: got %+v", c)
	}

	if err := os.WriteFile(file, []byte("host_id: h\nplugin_dir: /opt/a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c = agent.DefaultConfig()
	err = config.Load(&c, []string{"--config", file}, config.Options{LookupEnv: func(string) (string, bool) { return "", false }})
	if err == nil || !strings.Contains(err.Error(), `agent.yaml:2: unknown field "plugin_dir"`) {
		t.Errorf("unknown field: got %v, want the file and line", err)
	}
}

// TestMetrics runs a step and reads the agent's metrics from its registry.
func TestMetrics(t *testing.T) {
	h := newHarness(t)
	h.plugin("count", "exit 0\n")
	reg := prometheus.NewRegistry()
	a, err := agent.New(h.config(), agent.Deps{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	for a.Ready(ctx) != nil {
		time.Sleep(10 * time.Millisecond)
	}
	w := h.watch("task-m")
	h.send(h.request("task-m", "s1", "count", "go", nil))
	w.result(t, 10*time.Second)
	bad := h.request("task-m", "s2", "nope", "go", nil)
	h.send(bad)

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			got[mf.GetName()+labels(m)] = value(m)
		}
	}
	for name, want := range map[string]float64{
		`berth_agent_steps_total{outcome="ok",plugin="count"}`:         1,
		`berth_agent_step_duration_seconds{plugin="count"}`:            1, // sample count
		`berth_agent_steps_running`:                                    0,
		`berth_agent_steps_rejected_total{reason="unknown_plugin"}`:    1,
		`berth_agent_step_requests_total{disposition="accepted"}`:      1,
		`berth_natsbus_handled_total{class="agent.step",outcome="ok"}`: 2,
	} {
		if got[name] != want {
			t.Errorf("%s: got %v, want %v", name, got[name], want)
		}
	}
}

func labels(m *dto.Metric) string {
	if len(m.GetLabel()) == 0 {
		return ""
	}
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+`="`+l.GetValue()+`"`)
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return -1
}
