// Package charts checks the Helm chart in charts/berth: it renders the chart with the
// real helm (helm template, helm lint --strict) and checks the manifests against the rules
// the chart documents, and it checks that every metric the chart's dashboards and alerts
// use is one Berth exports (metrics_test.go).
package charts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// chartDir is charts/berth from test/charts.
var chartDir = filepath.Join("..", "..", "charts", "berth")

// helmBin finds helm on PATH or in $GOPATH/bin, or skips the test.
func helmBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "helm")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("helm is not installed (CI installs it: go install helm.sh/helm/v3/cmd/helm@v3.22.0)")
	return ""
}

// helm runs helm with args; it returns stdout, and stderr in the error.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, helmBin(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// obj is one rendered manifest, as generic YAML.
type obj map[string]any

func (o obj) kind() string { s, _ := o["kind"].(string); return s }
func (o obj) name() string { return str(o, "metadata", "name") }

// get walks maps by keys; nil when a key is missing.
func get(v any, keys ...string) any {
	if o, ok := v.(obj); ok {
		v = map[string]any(o)
	}
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any, keys ...string) string { s, _ := get(v, keys...).(string); return s }

func list(v any, keys ...string) []any { l, _ := get(v, keys...).([]any); return l }

// render runs helm template with --set values and parses every document.
func render(t *testing.T, sets ...string) []obj {
	t.Helper()
	args := []string{"template", "rel", chartDir, "--namespace", "berth"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, err := helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(out))
	var objs []obj
	for {
		// Decoded as a plain map: into obj, yaml would make every nested mapping an obj too.
		var o map[string]any
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("parse helm template output: %v", err)
		}
		if o != nil {
			objs = append(objs, obj(o))
		}
	}
	if len(objs) == 0 {
		t.Fatal("helm template rendered nothing")
	}
	return objs
}

// find returns the object of that kind whose name ends with suffix.
func find(t *testing.T, objs []obj, kind, suffix string) obj {
	t.Helper()
	for _, o := range objs {
		if o.kind() == kind && strings.HasSuffix(o.name(), suffix) {
			return o
		}
	}
	t.Fatalf("no %s named *%s in the render", kind, suffix)
	return nil
}

// workloads are the objects with a pod template.
func workloads(objs []obj) []obj {
	var out []obj
	for _, o := range objs {
		switch o.kind() {
		case "Deployment", "StatefulSet", "DaemonSet":
			out = append(out, o)
		}
	}
	return out
}

func podSpec(o obj) any { return get(o, "spec", "template", "spec") }

// labelsMatch reports whether every selector label is among labels.
func labelsMatch(selector, labels any) bool {
	if o, ok := selector.(obj); ok {
		selector = map[string]any(o)
	}
	sel, _ := selector.(map[string]any)
	lab, _ := labels.(map[string]any)
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lab[k] != v {
			return false
		}
	}
	return true
}

func TestLint(t *testing.T) {
	for _, sets := range [][]string{
		nil,
		{"metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true", "imageBuilder.engine.mode=host", "nats.replicas=3"},
	} {
		args := []string{"lint", "--strict", chartDir}
		for _, s := range sets {
			args = append(args, "--set", s)
		}
		if out, err := helm(t, args...); err != nil {
			t.Errorf("helm lint --strict with %v: %v\n%s", sets, err, out)
		}
	}
}

func TestCoord(t *testing.T) {
	objs := render(t)
	sts := find(t, objs, "StatefulSet", "-coord")
	if got, _ := get(sts, "spec", "replicas").(int); got != 3 {
		t.Errorf("coord StatefulSet replicas: got %v, want 3", get(sts, "spec", "replicas"))
	}
	vcts := list(sts, "spec", "volumeClaimTemplates")
	if len(vcts) != 1 {
		t.Fatalf("coord volumeClaimTemplates: got %d, want 1", len(vcts))
	}
	vct := str(vcts[0], "metadata", "name")
	mounted := false
	for _, c := range list(podSpec(sts), "containers") {
		for _, m := range list(c, "volumeMounts") {
			mounted = mounted || str(m, "name") == vct
		}
	}
	if !mounted {
		t.Errorf("coord container does not mount its volume claim %q", vct)
	}
	podLabels := get(sts, "spec", "template", "metadata", "labels")

	var pdbs int
	for _, o := range objs {
		if o.kind() == "PodDisruptionBudget" && labelsMatch(get(o, "spec", "selector", "matchLabels"), podLabels) {
			pdbs++
			if get(o, "spec", "maxUnavailable") != 1 {
				t.Errorf("coord PDB maxUnavailable: got %v, want 1 (a majority of 3 stays up)", get(o, "spec", "maxUnavailable"))
			}
		}
	}
	if pdbs != 1 {
		t.Errorf("PodDisruptionBudgets selecting the coord pods: got %d, want 1", pdbs)
	}

	terms := list(podSpec(sts), "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution")
	if len(terms) == 0 || str(terms[0], "topologyKey") != "kubernetes.io/hostname" || !labelsMatch(get(terms[0], "labelSelector", "matchLabels"), podLabels) {
		t.Errorf("coord pod anti-affinity: got %v, want a required term on kubernetes.io/hostname selecting the coord pods", get(podSpec(sts), "affinity"))
	}
	soft := find(t, render(t, "coord.antiAffinity=soft"), "StatefulSet", "-coord")
	if len(list(podSpec(soft), "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution")) == 0 {
		t.Errorf("coord.antiAffinity=soft: no preferred anti-affinity term")
	}

	headless := find(t, objs, "Service", "-coord-peer")
	if str(headless, "spec", "clusterIP") != "None" || get(headless, "spec", "publishNotReadyAddresses") != true {
		t.Errorf("coord peer Service: got clusterIP %q publishNotReadyAddresses %v, want None and true", str(headless, "spec", "clusterIP"), get(headless, "spec", "publishNotReadyAddresses"))
	}
	if str(sts, "spec", "serviceName") != headless.name() {
		t.Errorf("coord serviceName: got %q, want the headless Service %q", str(sts, "spec", "serviceName"), headless.name())
	}
	if !labelsMatch(get(headless, "spec", "selector"), podLabels) {
		t.Errorf("coord peer Service does not select the coord pods")
	}
	// Every member is in the initial cluster, at its stable DNS name.
	args := fmt.Sprint(list(podSpec(sts), "containers")[0].(map[string]any)["args"])
	for i := range 3 {
		want := fmt.Sprintf("rel-berth-coord-%d=rel-berth-coord-%d.%s.berth.svc.cluster.local:7380", i, i, headless.name())
		if !strings.Contains(args, want) {
			t.Errorf("coord args: %s lacks %s", args, want)
		}
	}

	if _, err := helm(t, "template", "rel", chartDir, "--set", "coord.replicas=2"); err == nil || !strings.Contains(err.Error(), "odd") {
		t.Errorf("coord.replicas=2: got error %v, want one saying the count must be odd", err)
	}
}

func TestStatelessServices(t *testing.T) {
	objs := render(t, "controller.replicas=3", "nameService.replicas=4")
	for suffix, want := range map[string]int{"-controller": 3, "-scheduler": 2, "-cmdb-sync": 2, "-image-builder": 2, "-name-service": 4} {
		d := find(t, objs, "Deployment", suffix)
		if got, _ := get(d, "spec", "replicas").(int); got != want {
			t.Errorf("Deployment %s replicas: got %v, want %d", d.name(), get(d, "spec", "replicas"), want)
		}
	}
	nats := find(t, objs, "StatefulSet", "-nats")
	if len(list(nats, "spec", "volumeClaimTemplates")) != 1 {
		t.Errorf("NATS StatefulSet: no volume claim for JetStream")
	}
	conf := str(find(t, objs, "ConfigMap", "-nats"), "data", "nats.conf")
	if !strings.Contains(conf, "jetstream") {
		t.Errorf("nats.conf has no jetstream block:\n%s", conf)
	}

	dns := find(t, objs, "Service", "-dns")
	var protos []string
	for _, p := range list(dns, "spec", "ports") {
		if get(p, "port") == 53 {
			protos = append(protos, str(p, "protocol"))
		}
	}
	slices.Sort(protos)
	if !slices.Equal(protos, []string{"TCP", "UDP"}) {
		t.Errorf("DNS Service port 53 protocols: got %v, want [TCP UDP]", protos)
	}
	if !labelsMatch(get(dns, "spec", "selector"), get(find(t, objs, "Deployment", "-name-service"), "spec", "template", "metadata", "labels")) {
		t.Errorf("DNS Service does not select the name-service pods")
	}

	agent := find(t, objs, "DaemonSet", "-agent")
	if get(podSpec(agent), "hostNetwork") != true {
		t.Errorf("agent DaemonSet hostNetwork: got %v, want true", get(podSpec(agent), "hostNetwork"))
	}
	if str(podSpec(agent), "dnsPolicy") != "ClusterFirstWithHostNet" {
		t.Errorf("agent dnsPolicy: got %q, want ClusterFirstWithHostNet (cluster names on the host network)", str(podSpec(agent), "dnsPolicy"))
	}
}

// dockerSocketUsers lists the workloads that mount a hostPath ending in docker.sock.
func dockerSocketUsers(objs []obj) []string {
	var out []string
	for _, o := range objs {
		if o.kind() == "" {
			continue
		}
		for _, v := range list(podSpec(o), "volumes") {
			if strings.HasSuffix(str(v, "hostPath", "path"), "docker.sock") {
				out = append(out, o.kind()+"/"+o.name())
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestDockerSocket checks the documented rule: the node's Docker socket is mounted into
// the agent DaemonSet only, and into the image builder only with imageBuilder.engine.mode
// host (whose pods are then pinned to nodeSelector); in the default dind mode the builder
// reaches a sidecar's socket through an emptyDir.
func TestDockerSocket(t *testing.T) {
	for _, tc := range []struct {
		sets []string
		want []string
	}{
		{nil, []string{"DaemonSet/rel-berth-agent"}},
		{[]string{"imageBuilder.engine.mode=host"}, []string{"DaemonSet/rel-berth-agent", "Deployment/rel-berth-image-builder"}},
		{[]string{"agent.docker.enabled=false"}, nil},
		{[]string{"imageBuilder.enabled=false", "agent.enabled=false"}, nil},
	} {
		objs := render(t, tc.sets...)
		if got := dockerSocketUsers(objs); !slices.Equal(got, tc.want) {
			t.Errorf("with %v: docker.sock hostPath in %v, want exactly %v", tc.sets, got, tc.want)
		}
		for _, o := range workloads(objs) {
			if !strings.HasSuffix(o.name(), "-image-builder") {
				continue
			}
			ps := podSpec(o)
			host := slices.Contains(tc.sets, "imageBuilder.engine.mode=host")
			if ns, _ := get(ps, "nodeSelector").(map[string]any); host && len(ns) == 0 {
				t.Errorf("image builder in host mode has no nodeSelector")
			}
			var names []string
			for _, c := range list(ps, "containers") {
				names = append(names, str(c, "name"))
			}
			if wantSidecar := !host; slices.Contains(names, "dind") != wantSidecar {
				t.Errorf("with %v: image builder containers %v, dind sidecar wanted: %v", tc.sets, names, wantSidecar)
			}
		}
	}
}

// TestProbesAndScrape checks that every container of every workload has a liveness and a
// readiness probe, and every Berth pod (all but NATS, which has no /metrics) carries the
// Prometheus scrape annotations for one of its container ports.
func TestProbesAndScrape(t *testing.T) {
	for _, sets := range [][]string{nil, {"imageBuilder.engine.mode=host", "nats.replicas=3"}} {
		objs := render(t, sets...)
		ws := workloads(objs)
		if len(ws) != 8 {
			t.Errorf("with %v: got %d workloads, want 8 (coord, nats, 5 Deployments, the agent)", sets, len(ws))
		}
		for _, w := range ws {
			for _, c := range list(podSpec(w), "containers") {
				for _, p := range []string{"livenessProbe", "readinessProbe"} {
					if get(c, p) == nil {
						t.Errorf("with %v: %s %s container %s has no %s", sets, w.kind(), w.name(), str(c, "name"), p)
					}
				}
				if h := str(c, "readinessProbe", "httpGet", "path"); strings.HasPrefix(str(c, "image"), "berth/berth-") && h != "/readyz" {
					t.Errorf("%s container %s readiness path: got %q, want /readyz", w.name(), str(c, "name"), h)
				}
				if h := str(c, "livenessProbe", "httpGet", "path"); strings.HasPrefix(str(c, "image"), "berth/berth-") && h != "/healthz" {
					t.Errorf("%s container %s liveness path: got %q, want /healthz", w.name(), str(c, "name"), h)
				}
			}
			if strings.HasSuffix(w.name(), "-nats") {
				continue
			}
			ann := get(w, "spec", "template", "metadata", "annotations")
			if str(ann, "prometheus.io/scrape") != "true" || str(ann, "prometheus.io/path") != "/metrics" {
				t.Errorf("%s %s scrape annotations: got %v", w.kind(), w.name(), ann)
				continue
			}
			port := str(ann, "prometheus.io/port")
			var ports []string
			for _, c := range list(podSpec(w), "containers") {
				for _, p := range list(c, "ports") {
					ports = append(ports, fmt.Sprint(get(p, "containerPort")))
				}
			}
			if !slices.Contains(ports, port) {
				t.Errorf("%s prometheus.io/port %q is none of its container ports %v", w.name(), port, ports)
			}
		}
	}
	off := render(t, "metrics.scrapeAnnotations=false")
	for _, w := range workloads(off) {
		if str(get(w, "spec", "template", "metadata", "annotations"), "prometheus.io/scrape") != "" {
			t.Errorf("metrics.scrapeAnnotations=false: %s still has scrape annotations", w.name())
		}
	}
}

// TestMonitoringObjects checks the dashboards and rules ConfigMaps, and that the
// ServiceMonitor and PrometheusRule appear only when enabled, the rule with the rule
// file's groups.
func TestMonitoringObjects(t *testing.T) {
	objs := render(t)
	for _, o := range objs {
		if o.kind() == "ServiceMonitor" || o.kind() == "PrometheusRule" {
			t.Errorf("default render has a %s; want it only when enabled", o.kind())
		}
	}
	dash := find(t, objs, "ConfigMap", "-dashboards")
	if !strings.Contains(str(dash, "data", "berth.json"), "berth_coord_raft_wal_fsync_duration_seconds") {
		t.Errorf("dashboards ConfigMap lacks berth.json with the coord panels")
	}
	rulesFile, err := os.ReadFile(filepath.Join(chartDir, "alerts", "berth-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := yaml.Unmarshal(rulesFile, &want); err != nil {
		t.Fatalf("alerts/berth-rules.yaml: %v", err)
	}

	objs = render(t, "metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true")
	rule := find(t, objs, "PrometheusRule", "rel-berth")
	if got := len(list(rule, "spec", "groups")); got != len(list(want, "groups")) || got == 0 {
		t.Errorf("PrometheusRule groups: got %d, want the rule file's %d", got, len(list(want, "groups")))
	}
	sm := find(t, objs, "ServiceMonitor", "rel-berth")
	sel := get(sm, "spec", "selector", "matchLabels")
	var selected []string
	for _, o := range objs {
		if o.kind() == "Service" && labelsMatch(sel, get(o, "metadata", "labels")) {
			var named bool
			for _, p := range list(o, "spec", "ports") {
				named = named || str(p, "name") == "metrics"
			}
			if !named {
				t.Errorf("Service %s is selected by the ServiceMonitor but has no port named metrics", o.name())
			}
			selected = append(selected, strings.TrimPrefix(o.name(), "rel-berth-"))
		}
	}
	slices.Sort(selected)
	if wantSel := []string{"agent", "cmdb-sync", "controller", "coord", "image-builder", "names", "scheduler"}; !slices.Equal(selected, wantSel) {
		t.Errorf("Services the ServiceMonitor selects: got %v, want %v", selected, wantSel)
	}
}
