package badinput

import (
	"net/http"
	"strings"
	"testing"
)

// TestControllerRefusesHostileInput covers the controller's API (services/task-controller
// internal/api): deployments, tasks, their control actions and event streams, the
// service tree, hosts, instances, the names proxy and the console's static files.
func TestControllerRefusesHostileInput(t *testing.T) {
	b := shared
	s := b.sentinel
	ident := identPayloads(s)
	const big = 9 << 20

	var cases []httpCase

	// POST /v1/deployments, package mode and container mode.
	dep := doc(`{"service":"` + baseService + `","version":"` + baseVersion + `","artifact":{"url":"` + missingPkg + `","sha256":"` + baseSHA + `"},` +
		`"hosts":["` + b.host + `"],"strategy":{"infra_retries":0}}`)
	durations := badDurations(s)
	cases = append(cases, bodyCases("controller", "POST", "/v1/deployments", dep, []slot{
		{field: "service", payloads: ident},
		{field: "version", payloads: without(ident, "upper")},
		{field: "mode", payloads: without(ident, "empty")},
		{field: "artifact.url", payloads: ident},
		{field: "artifact.sha256", payloads: ident},
		{field: "hosts.0", payloads: without(ident, "upper"), wantIn: "hosts[0]"},
		{field: "strategy.pause", payloads: without(ident, "empty"), wantIn: "pause"},
		{field: "strategy.max_failures", payloads: ident, wantIn: "max_failures"},
		{field: "strategy.health_gate.deadline", payloads: durations, wantIn: "deadline"},
		{field: "strategy.health_gate.min_healthy_time", payloads: durations, wantIn: "min_healthy_time"},
		{field: "strategy.progress_deadline", payloads: durations, wantIn: "progress_deadline"},
		{field: "strategy.step_timeout", payloads: durations, wantIn: "step_timeout"},
	}, map[string]string{
		"service": "string", "version": "string", "mode": "string", "artifact": "object", "artifact.url": "string",
		"artifact.sha256": "string", "hosts": "list", "hosts.0": "string", "strategy": "object", "strategy.batches": "list",
		"strategy.max_parallel": "uint", "strategy.pause": "flex", "strategy.infra_retries": "uint", "strategy.auto_rollback": "bool",
		"queue": "bool", "placement": "object",
	}, []string{"evil", "artifact.evil", "strategy.evil", "strategy.health_gate.evil"}, big)...)
	// Batches are a list of counts and percentages.
	for _, p := range ident {
		cases = append(cases, httpCase{name: "/v1/deployments strategy.batches.0=" + p.name, server: "controller", method: "POST", path: "/v1/deployments",
			body: dep.with("strategy.batches", []any{p.value}), wantIn: "batches"})
	}
	ctr := doc(`{"service":"` + baseService + `","version":"` + baseVersion + `","mode":"container","artifact":{"url":"` + missingPkg + `","sha256":"` + baseSHA + `"},` +
		`"placement":{"replicas":1,"cpu_millis":100,"memory_bytes":67108864}}`)
	cases = append(cases, bodyCases("controller", "POST", "/v1/deployments", ctr, []slot{
		{field: "placement.spread", payloads: without(ident, "empty"), wantIn: "spread"},
		{field: "placement.constraints", payloads: constraintPayloads(s), wantIn: "constraints"},
	}, map[string]string{
		"placement.replicas": "uint", "placement.cpu_millis": "uint", "placement.memory_bytes": "uint", "placement.max_per_host": "uint",
		"placement.spread": "string", "placement.constraints": "string",
	}, []string{"placement.evil"}, 0)...)
	for _, v := range []struct {
		name  string
		field string
		value any
	}{
		{"replicas-0", "placement.replicas", 0}, {"replicas-huge", "placement.replicas", 1 << 31}, {"cpu-0", "placement.cpu_millis", 0},
		{"cpu-huge", "placement.cpu_millis", 1 << 40}, {"memory-tiny", "placement.memory_bytes", 1}, {"memory-huge", "placement.memory_bytes", uint64(1) << 62},
		{"max-per-host-huge", "placement.max_per_host", 1 << 30}, {"constraints-long", "placement.constraints", strings.Repeat("a=b,", 5000)},
		{"constraints-nul", "placement.constraints", "a=b\x00"}, {"hosts-in-container-mode", "hosts", []any{b.host}},
	} {
		cases = append(cases, httpCase{name: "/v1/deployments " + v.name, server: "controller", method: "POST", path: "/v1/deployments",
			body: ctr.with(v.field, v.value), wantIn: v.field[strings.LastIndexByte(v.field, '.')+1:]})
	}
	manyHosts := make([]any, 20001)
	for i := range manyHosts {
		manyHosts[i] = "h" + strings.Repeat("x", i%7)
	}
	cases = append(cases,
		httpCase{name: "/v1/deployments hosts-duplicate", server: "controller", method: "POST", path: "/v1/deployments", body: dep.with("hosts", []any{b.host, b.host}), wantIn: "twice"},
		httpCase{name: "/v1/deployments hosts-20001", server: "controller", method: "POST", path: "/v1/deployments", body: dep.with("hosts", manyHosts), wantIn: "hosts"},
		httpCase{name: "/v1/deployments service-missing-node", server: "controller", method: "POST", path: "/v1/deployments", body: dep.with("service", "badinput/nowhere"), want: http.StatusNotFound},
		httpCase{name: "/v1/deployments max-parallel-huge", server: "controller", method: "POST", path: "/v1/deployments", body: dep.with("strategy.max_parallel", 1<<31), wantIn: "max_parallel"},
		httpCase{name: "/v1/deployments infra-retries-huge", server: "controller", method: "POST", path: "/v1/deployments", body: dep.with("strategy.infra_retries", 1<<31), wantIn: "infra_retries"},
		httpCase{name: "/v1/deployments artifact-null", server: "controller", method: "POST", path: "/v1/deployments", body: dep.with("artifact", nil), wantIn: "artifact"},
		httpCase{name: "/v1/deployments null", server: "controller", method: "POST", path: "/v1/deployments", body: []byte("null")},
		httpCase{name: "/v1/deployments empty", server: "controller", method: "POST", path: "/v1/deployments", body: []byte{}},
	)

	// POST /v1/tasks.
	task := doc(`{"hosts":["` + b.host + `"],"plugin":"` + echoPlugin + `","action":"run","service":"` + baseService + `","arguments":{"k":"v"},"strategy":{"infra_retries":0}}`)
	cases = append(cases, bodyCases("controller", "POST", "/v1/tasks", task, []slot{
		{field: "hosts.0", payloads: without(ident, "upper"), wantIn: "hosts[0]"},
		{field: "plugin", payloads: ident},
		{field: "action", payloads: without(ident, "empty")},
		{field: "service", payloads: without(ident, "empty")},
		{field: "arguments.*key", payloads: without(ident, "upper"), wantIn: "argument"},
		{field: "strategy.pause", payloads: without(ident, "empty"), wantIn: "pause"},
		{field: "strategy.step_timeout", payloads: durations, wantIn: "step_timeout"},
	}, map[string]string{
		"hosts": "list", "plugin": "string", "action": "string", "service": "string", "arguments": "map", "args": "list", "strategy": "object",
	}, []string{"evil", "strategy.evil"}, big)...)
	cases = append(cases,
		httpCase{name: "/v1/tasks arguments-70k", server: "controller", method: "POST", path: "/v1/tasks", body: task.with("arguments.k", strings.Repeat("x", 70<<10)), wantIn: "arguments"},
		httpCase{name: "/v1/tasks args-70k", server: "controller", method: "POST", path: "/v1/tasks", body: task.with("args", []any{strings.Repeat("x", 70<<10)}), wantIn: "arguments"},
		httpCase{name: "/v1/tasks hosts-empty", server: "controller", method: "POST", path: "/v1/tasks", body: task.with("hosts", []any{}), wantIn: "hosts"},
		httpCase{name: "/v1/tasks null", server: "controller", method: "POST", path: "/v1/tasks", body: []byte("null")},
	)

	// The service tree: the path, and every field of PUT and PATCH.
	pathIdent := urlIdentPayloads(s)
	for _, m := range []string{"GET", "PUT", "PATCH", "DELETE"} {
		var body []byte
		if m == "PUT" || m == "PATCH" {
			body = []byte(`{"description":"x"}`)
		}
		cases = append(cases, pathCases("controller", m, "/v1/tree/", "", pathIdent, body, "")...)
		cases = append(cases, pathCases("controller", m, "/v1/tree/badinput/", "", pathIdent, body, "")...)
	}
	cases = append(cases, httpCase{name: "/v1/tree/{9-segments}", server: "controller", method: "PUT", path: "/v1/tree/a/b/c/d/e/f/g/h/i", body: []byte("{}"), wantIn: "segments"})
	node := doc(`{"owners":["badinput"],"labels":{"tier":"test"},"hosts":["` + b.host + `"],"description":"baseline","policy":{"strategy":{"infra_retries":0},"health":{"rise":1},"dns_ttl":"5s"},"unset":["strategy.pause"]}`)
	for _, m := range []string{"PUT", "PATCH"} {
		cases = append(cases, bodyCases("controller", m, "/v1/tree/"+baseService, node, []slot{
			{field: "owners.0", payloads: []payload{{"empty", ""}, {"newline", "a\nb"}, {"crlf", "a\r\nb"}, {"tab", "a\tb"}, {"nul", "a\x00b"}, {"escape", "a\x1b[2Jb"}, {"long-300", strings.Repeat("o", 300)}}, wantIn: "owners[0]"},
			{field: "labels.*key", payloads: without(ident, "dotdot", "dotdot-only", "dot", "inner-dotdot", "absolute", "double-slash", "dotdot-tail", "overlong-dots", "upper"), wantIn: "label"},
			{field: "labels.tier", payloads: []payload{{"long-300", strings.Repeat("v", 300)}}, wantIn: "labels"},
			{field: "hosts.0", payloads: without(ident, "upper"), wantIn: "hosts[0]"},
			{field: "description", payloads: []payload{{"long-2k", strings.Repeat("d", 2048)}}, wantIn: "description"},
			{field: "unset.0", payloads: ident, wantIn: "unset"},
			{field: "policy.dns_ttl", payloads: durations, wantIn: "dns_ttl"},
			{field: "policy.health.interval", payloads: durations, wantIn: "interval"},
			{field: "policy.health.timeout", payloads: durations, wantIn: "timeout"},
			{field: "policy.strategy.pause", payloads: without(ident, "empty"), wantIn: "pause"},
		}, map[string]string{
			"owners": "list", "owners.0": "string", "labels": "map", "hosts": "list", "description": "string", "policy": "object",
			"policy.strategy": "object", "policy.health": "object", "policy.health.rise": "uint", "policy.dns_ttl": "flex", "unset": "list",
		}, []string{"evil", "policy.evil", "policy.health.evil", "policy.strategy.evil"}, big)...)
		cases = append(cases,
			httpCase{name: "/v1/tree/base rise-0", server: "controller", method: m, path: "/v1/tree/" + baseService, body: node.with("policy.health.rise", 0), wantIn: "rise"},
			httpCase{name: "/v1/tree/base rise-huge", server: "controller", method: m, path: "/v1/tree/" + baseService, body: node.with("policy.health.rise", 1000), wantIn: "rise"},
			httpCase{name: "/v1/tree/base hosts-duplicate", server: "controller", method: m, path: "/v1/tree/" + baseService, body: node.with("hosts", []any{b.host, b.host}), wantIn: "twice"},
		)
	}
	// Slashes around the prefix are trimmed: "/etc/passwd" is the subtree etc/passwd.
	cases = append(cases, queryCases("controller", "GET", "/v1/tree", "prefix", "", without(ident, "empty", "double-slash", "dotdot-tail", "absolute"), "prefix")...)
	cases = append(cases, httpCase{name: "/v1/tree/badinput has children", server: "controller", method: "DELETE", path: "/v1/tree/badinput", want: http.StatusConflict, wantIn: "child"})

	// Listing runs.
	cases = append(cases, queryCases("controller", "GET", "/v1/deployments", "service", "", without(ident, "empty"), "service")...)
	for _, list := range []string{"/v1/deployments", "/v1/tasks"} {
		cases = append(cases, queryCases("controller", "GET", list, "state", "", without(ident, "empty"), "state")...)
		cases = append(cases, queryCases("controller", "GET", list, "limit", "", []payload{{"zero", "0"}, {"negative", "-1"}, {"huge", "10001"}, {"word", "all"},
			{"overflow", "99999999999999999999"}, {"subst", "1$(touch " + s + ")"}}, "limit")...)
	}

	// One run: its id, its wait and revision, its control actions and its event stream.
	pathIDs := urlIdentPayloads(s)
	for _, kind := range []struct{ list, id string }{{"/v1/deployments/", seededDeployment}, {"/v1/tasks/", seededTask}} {
		cases = append(cases, pathCases("controller", "GET", kind.list, "", pathIDs, nil, "")...)
		cases = append(cases, pathCases("controller", "GET", kind.list, "/events", pathIDs, nil, "")...)
		for _, action := range []string{"pause", "abort"} {
			cases = append(cases, pathCases("controller", "POST", kind.list, "/"+action, pathIDs, nil, "")...)
		}
		cases = append(cases, pathCases("controller", "POST", kind.list+kind.id+"/", "", pathIDs, nil, "")...)
		cases = append(cases, queryCases("controller", "GET", kind.list+kind.id, "wait", "", append(badDurations(s), payload{"too-long", "61s"}), "wait")...)
		cases = append(cases, queryCases("controller", "GET", kind.list+kind.id, "after_revision", "", []payload{{"negative", "-1"}, {"word", "latest"},
			{"overflow", "99999999999999999999"}, {"float", "1.5"}, {"subst", "1$(touch " + s + ")"}}, "after_revision")...)
	}
	cases = append(cases,
		httpCase{name: "/v1/tasks/{id}/rollback", server: "controller", method: "POST", path: "/v1/tasks/" + seededTask + "/rollback", want: http.StatusNotFound, wantIn: "action"},
		httpCase{name: "/v1/deployments/{ended}/abort", server: "controller", method: "POST", path: "/v1/deployments/" + seededDeployment + "/abort", want: http.StatusConflict, wantIn: "ended"},
		httpCase{name: "/v1/deployments/{task id}", server: "controller", method: "GET", path: "/v1/deployments/" + seededTask, want: http.StatusNotFound},
	)

	// Hosts, instances and the names proxy.
	cases = append(cases, queryCases("controller", "GET", "/v1/hosts", "dc", "", without(ident, "empty", "upper"), "dc")...)
	cases = append(cases, pathCases("controller", "GET", "/v1/instances/", "", pathIdent, nil, "")...)
	cases = append(cases, pathCases("controller", "GET", "/v1/names/resolve/", "", pathIdent, nil, "")...)
	cases = append(cases, queryCases("controller", "GET", "/v1/names/resolve/"+baseService, "dc", "", without(ident, "empty"), "dc")...)
	cases = append(cases, queryCases("controller", "GET", "/v1/names/resolve/"+baseService, "explain", "", []payload{{"word", "maybe"}, {"subst", "$(touch " + s + ")"}}, "explain")...)
	cases = append(cases, queryCases("controller", "GET", "/v1/names/resolve/"+baseService, "family", "", without(ident, "empty"), "family")...)

	// Methods no route has, and the console's files.
	for _, m := range []struct{ method, path string }{
		{"DELETE", "/v1/deployments"}, {"PUT", "/v1/deployments/" + seededDeployment}, {"DELETE", "/v1/hosts"}, {"POST", "/v1/tree"},
		{"PATCH", "/v1/tasks"}, {"TRACE", "/v1/tree"}, {"POST", "/v1/names/dcs"}, {"PUT", "/v1/leader"},
	} {
		cases = append(cases, httpCase{name: m.path + " wrong method", server: "controller", method: m.method, path: m.path, want: http.StatusMethodNotAllowed})
	}
	for _, p := range pathPayloads() {
		for _, seg := range pathSegments(p) {
			if strings.Contains(seg.value, "%00") || p.name == "dot" {
				continue
			}
			cases = append(cases, httpCase{name: "/ui/{" + seg.name + "}", server: "controller", method: "GET", path: "/ui/" + seg.value})
		}
	}
	cases = append(cases, httpCase{name: "/v1/unknown", server: "controller", method: "GET", path: "/v1/" + strings.Repeat("x", 8000), want: http.StatusNotFound})

	markKnown(cases, defectConstraints, "placement.constraints", constraintsAccepted...)
	b.runRefused(t, cases)
}
