package charts

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// repoRoot is the repository root from test/charts.
var repoRoot = filepath.Join("..", "..")

// metricName matches Berth metric names in PromQL.
var metricName = regexp.MustCompile(`\bberth_[a-z0-9_]+`)

// baseName strips the series suffixes of histograms and summaries.
func baseName(s string) string {
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if strings.HasSuffix(s, suf) {
			return strings.TrimSuffix(s, suf)
		}
	}
	return s
}

// needTraffic are metrics the dashboards and alerts use that a fresh berth dev, after the
// small task the test runs, does not export: labelled vectors that get their first series
// only when something happens, and services berth dev does not embed. Each is checked
// against the services' source instead.
var needTraffic = map[string]string{
	"berth_agent_template_reloads_total":   "a template re-rendered and its reload run",
	"berth_agent_template_renders_total":   "a template rendered",
	"berth_scheduler_requests_total":       "a placement request (container mode)",
	"berth_scheduler_rejections_total":     "a placement that could not be made",
	"berth_image_builder_builds_total":     "an image build (container mode)",
	"berth_image_builder_requests_total":   "an image request (container mode)",
	"berth_controller_runs_ended_total":    "a deployment or task that ended",
	"berth_controller_targets_ended_total": "a deployment target that ended",
	"berth_controller_step_results_total":  "a step result",
	"berth_agent_step_duration_seconds":    "a step that ran",
	"berth_coord_requests_total":           "a client call (always true once anything ran)",
}

// usedMetrics reads every Berth metric name the dashboards' expressions and the alerting
// rules use; it also checks both files' structure.
func usedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	dashboards, err := filepath.Glob(filepath.Join(chartDir, "dashboards", "*.json"))
	if err != nil || len(dashboards) == 0 {
		t.Fatalf("no dashboards in %s/dashboards: %v", chartDir, err)
	}
	for _, f := range dashboards {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Title  string `json:"title"`
			Panels []struct {
				Title   string `json:"title"`
				Type    string `json:"type"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, p := range d.Panels {
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", f, p.Title)
			}
			for _, tg := range p.Targets {
				names := metricName.FindAllString(tg.Expr, -1)
				if len(names) == 0 {
					t.Errorf("%s: panel %q: query %q uses no Berth metric", f, p.Title, tg.Expr)
				}
				for _, n := range names {
					used[baseName(n)] = append(used[baseName(n)], filepath.Base(f)+": "+p.Title)
				}
			}
		}
	}
	rulesFile := filepath.Join(chartDir, "alerts", "berth-rules.yaml")
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert  string            `yaml:"alert"`
				Expr   string            `yaml:"expr"`
				Labels map[string]string `yaml:"labels"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" {
				t.Errorf("%s: group %s: rule %q needs alert, expr and a severity label", rulesFile, g.Name, r.Alert)
			}
			for _, n := range metricName.FindAllString(r.Expr, -1) {
				used[baseName(n)] = append(used[baseName(n)], "alert "+r.Alert)
			}
		}
	}
	// The alerts the chart promises (charts/berth/values.yaml, README).
	for _, want := range []string{"BerthCoordNoLeader", "BerthCoordFrequentLeaderChanges", "BerthDeploymentPastDeadline",
		"BerthDNSServfailRate", "BerthHostDown", "BerthImageBuilderFailing"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("%s: no alert %s", rulesFile, want)
		}
	}
	return used
}

// definedInSource reports whether a Berth service or package defines the metric: some
// non-test Go file holds both its subsystem and its name as string literals
// (Namespace "berth", Subsystem "x", Name "y" makes berth_x_y).
func definedInSource(t *testing.T, full string) bool {
	t.Helper()
	rest := strings.TrimPrefix(full, "berth_")
	var splits [][2]string
	for i := range len(rest) {
		if rest[i] == '_' {
			splits = append(splits, [2]string{rest[:i], rest[i+1:]})
		}
	}
	found := false
	for _, dir := range []string{"services", "pkg", "cmd"} {
		_ = filepath.WalkDir(filepath.Join(repoRoot, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || found || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			src := string(b)
			for _, s := range splits {
				if strings.Contains(src, strconv.Quote(s[0])) && strings.Contains(src, strconv.Quote(s[1])) {
					found = true
					return filepath.SkipAll
				}
			}
			return nil
		})
	}
	return found
}

// TestDashboardAndAlertMetricsExist checks that every metric the dashboards and alerts use
// is exported by a running berth dev (after a small task through the CLI), or, for the
// documented few that need traffic berth dev cannot make, defined in the source.
func TestDashboardAndAlertMetricsExist(t *testing.T) {
	used := usedMetrics(t)
	exported := scrapeBerthDev(t)

	var names []string
	for n := range used {
		names = append(names, n)
	}
	slices.Sort(names)
	var viaSource []string
	for _, n := range names {
		if exported[n] {
			continue
		}
		why, documented := needTraffic[n]
		if !documented {
			t.Errorf("%s (used by %s) is not exported by berth dev, and not in the documented needTraffic list", n, strings.Join(used[n], "; "))
			continue
		}
		if !definedInSource(t, n) {
			t.Errorf("%s (used by %s; exported after %s) is defined nowhere in services/, pkg/ or cmd/", n, strings.Join(used[n], "; "), why)
			continue
		}
		viaSource = append(viaSource, n)
	}
	t.Logf("%d metrics used; %d exported by berth dev; checked in the source only: %v", len(names), len(names)-len(viaSource), viaSource)
	for n := range needTraffic {
		if _, ok := used[n]; !ok {
			t.Errorf("needTraffic lists %s, which no dashboard or alert uses: remove it", n)
		}
	}
}

// scrapeBerthDev builds the berth CLI, runs berth dev on free ports, runs one task through
// a plugin that exits 0, asks its DNS a question, and returns the metric names its /metrics
// serves (histogram and summary suffixes stripped).
func scrapeBerthDev(t *testing.T) map[string]bool {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "berth")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "./cmd/berth")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/berth: %v\n%s", err, out)
	}
	help, err := exec.CommandContext(t.Context(), bin, "dev", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("berth dev --help: %v\n%s", err, help)
	}
	args := []string{"dev", "--data", t.TempDir(), "--coord-port", strconv.Itoa(freeCoordPort(t))}
	// Every other port berth dev has a flag for is left to the kernel, so that the test
	// never collides with another berth dev on the machine.
	for _, f := range []string{"nats-port", "controller-port", "admin-port", "dns-port", "names-port", "artifacts-port", "ftp-port", "demo-port", "resolver-port", "agent-api-port"} {
		if strings.Contains(string(help), "--"+f+" ") {
			args = append(args, "--"+f, "0")
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	dev := exec.CommandContext(ctx, bin, args...)
	dev.Cancel = func() error { return dev.Process.Signal(os.Interrupt) }
	dev.WaitDelay = 15 * time.Second
	stdout, err := dev.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuf
	dev.Stderr = &logs
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = dev.Wait()
		wg.Wait()
	})

	// The endpoints berth dev prints once it is up.
	ep := map[string]string{}
	deadline := time.After(90 * time.Second)
	for up := false; !up; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("berth dev ended before it was up:\n%s", logs.String())
			}
			f := strings.Fields(l)
			switch {
			case strings.HasPrefix(l, "Press Ctrl-C"):
				up = true
			case len(f) >= 2 && !strings.HasPrefix(l, "berth dev"):
				ep[f[0]] = strings.Join(f[1:], " ")
			}
		case <-deadline:
			t.Fatalf("berth dev not up within 90 s:\n%s", logs.String())
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range lines {
		}
	}()
	metricsURL := ep["metrics"]
	if metricsURL == "" {
		t.Fatalf("berth dev printed no metrics endpoint: %v", ep)
	}

	// One task: a plugin that exits 0, on this host, through the controller.
	if ctl, agent := ep["controller"], ep["agent"]; ctl != "" && strings.Contains(agent, "plugins in ") {
		host := strings.Fields(strings.TrimPrefix(agent, "host "))[0]
		host = strings.TrimSuffix(host, ",")
		plugins := strings.TrimSpace(agent[strings.Index(agent, "plugins in ")+len("plugins in "):])
		if err := os.MkdirAll(plugins, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(plugins, "metricsprobe"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(t.Context(), time.Minute)
		out, err := exec.CommandContext(rctx, bin, "run", "--controller", ctl, "--hosts", host, "--plugin", "metricsprobe").CombinedOutput()
		rcancel()
		if err != nil {
			t.Fatalf("berth run --hosts %s --plugin metricsprobe: %v\n%s", host, err, out)
		}
	} else {
		t.Logf("berth dev printed no controller or agent plugin directory (%v): no task run", ep)
	}
	if dns := ep["DNS"]; dns != "" {
		if addr := strings.Fields(dns)[0]; addr != "" {
			if c, err := net.DialTimeout("udp", addr, time.Second); err == nil {
				// A query for the zone's SOA, as raw bytes (id 1, RD, one question).
				q := []byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 'n', 's', 5, 'b', 'e', 'r', 't', 'h', 8, 'i', 'n', 't', 'e', 'r', 'n', 'a', 'l', 0, 0, 6, 0, 1}
				_, _ = c.Write(q)
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, _ = c.Read(make([]byte, 512))
				c.Close()
			}
		}
	}

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, metricsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", metricsURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		n := l
		if i := strings.IndexAny(l, "{ "); i >= 0 {
			n = l[:i]
		}
		names[baseName(n)] = true
	}
	if !names["berth_coord_revision"] {
		t.Fatalf("berth dev's /metrics lacks berth_coord_revision: not the metrics of every service?\n%.2000s", body)
	}
	return names
}

// freeCoordPort is a port p with p and p+1 free (coord's client and peer ports).
func freeCoordPort(t *testing.T) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	t.Fatal("no two consecutive free ports on loopback")
	return 0
}

// syncBuf collects a process's output while the test reads it.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
