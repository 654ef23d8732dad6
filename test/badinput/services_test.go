package badinput

import (
	"bytes"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNameServiceRefusesHostileInput covers the name service's HTTP API
// (services/name-service/internal/httpapi): views, resolve, watch, events and the traffic
// policy endpoints.
func TestNameServiceRefusesHostileInput(t *testing.T) {
	b := shared
	s := b.sentinel
	// The name service takes upper case in service paths and instance ids (DNS names are
	// case-insensitive); upper case is no hostile input there.
	ident := without(identPayloads(s), "upper")
	pathIdent := without(urlIdentPayloads(s), "upper")
	var cases []httpCase
	for _, route := range []struct{ method, prefix string }{
		{"GET", "/v1/view/"}, {"GET", "/v1/resolve/"}, {"GET", "/v1/watch/"}, {"GET", "/v1/events/"},
		{"GET", "/v1/traffic/"}, {"PUT", "/v1/traffic/"}, {"DELETE", "/v1/traffic/"},
	} {
		var body []byte
		if route.method == "PUT" {
			body = []byte(`{"mode":"ANSWER_MODE_ALL"}`)
		}
		cases = append(cases, pathCases("names", route.method, route.prefix, "", pathIdent, body, "")...)
	}
	cases = append(cases, queryCases("names", "GET", "/v1/resolve/"+baseService, "explain", "", []payload{{"word", "maybe"}, {"subst", "$(touch " + s + ")"}}, "explain")...)
	cases = append(cases, queryCases("names", "GET", "/v1/resolve/"+baseService, "family", "", without(ident, "empty"), "family")...)
	cases = append(cases, queryCases("names", "GET", "/v1/resolve/"+baseService, "dc", "", without(ident, "empty"), "datacenter")...)
	for _, route := range []string{"/v1/watch/", "/v1/events/"} {
		cases = append(cases, queryCases("names", "GET", route+baseService, "index", "", []payload{{"negative", "-1"}, {"word", "now"},
			{"overflow", "99999999999999999999"}, {"subst", "1$(touch " + s + ")"}}, "index")...)
		cases = append(cases, queryCases("names", "GET", route+baseService, "wait", "", append(badDurations(s), payload{"too-long", "11m"}, payload{"zero", "0s"}), "wait")...)
	}
	policy := doc(`{"mode":"ANSWER_MODE_LIMIT","limit":2,"min_healthy":1,"version_weights":{"1.0":100},"instance_weights":{"i-1":10},` +
		`"dc_overrides":{"dev":"dev"},"pin":["i-2"],"exclude":["i-3"],"panic_threshold":50}`)
	cases = append(cases, bodyCases("names", "PUT", "/v1/traffic/"+baseService, policy, []slot{
		{field: "mode", payloads: ident, wantIn: "mode"},
		{field: "version_weights.*key", payloads: without(ident, "empty"), wantIn: "version_weights"},
		{field: "instance_weights.*key", payloads: ident, wantIn: "instance_weights"},
		{field: "dc_overrides.*key", payloads: ident, wantIn: "dc_overrides"},
		{field: "dc_overrides.dev", payloads: ident, wantIn: "dc_overrides"},
		{field: "pin.0", payloads: ident, wantIn: "pin"},
		{field: "exclude.0", payloads: ident, wantIn: "exclude"},
		{field: "panic_threshold", payloads: []payload{{"nan", "NaN"}, {"inf", "Infinity"}, {"word", "half"}}, wantIn: "panic_threshold"},
	}, map[string]string{
		"mode": "flex", "limit": "pint", "min_healthy": "pint", "version_weights": "map", "instance_weights": "map",
		"dc_overrides": "map", "pin": "list", "exclude": "list", "panic_threshold": "number", "disable_same_dc": "bool",
	}, []string{"evil"}, 9<<20)...)
	cases = append(cases, httpCase{name: "/v1/traffic/base updated_at", server: "names", method: "PUT", path: "/v1/traffic/" + baseService, body: policy.with("updated_at", "$(touch "+s+")")})
	for _, v := range []struct {
		name, field string
		value       any
	}{
		{"panic-over-100", "panic_threshold", 101}, {"panic-negative", "panic_threshold", -1}, {"weight-huge", "version_weights", map[string]any{"1.0": 1 << 30}},
		{"pin-and-exclude", "exclude", []any{"i-2"}}, {"pin-twice", "pin", []any{"i-2", "i-2"}}, {"dc-unknown", "dc_overrides.dev", "nowhere"},
	} {
		cases = append(cases, httpCase{name: "/v1/traffic/base " + v.name, server: "names", method: "PUT", path: "/v1/traffic/" + baseService,
			body: policy.with(v.field, v.value), wantIn: strings.SplitN(v.field, ".", 2)[0]})
	}
	cases = append(cases,
		httpCase{name: "/v1/services wrong method", server: "names", method: "POST", path: "/v1/services", want: http.StatusMethodNotAllowed},
		httpCase{name: "/v1/dcs wrong method", server: "names", method: "DELETE", path: "/v1/dcs", want: http.StatusMethodNotAllowed},
		httpCase{name: "/v1/traffic wrong method", server: "names", method: "POST", path: "/v1/traffic/" + baseService, want: http.StatusMethodNotAllowed},
	)
	b.runRefused(t, cases)
}

// TestAgentNameAPIRefusesHostileInput covers the agent's local name API
// (services/agent/internal/nameapi): resolve, watch and callbacks, whose URLs must stay on
// loopback.
func TestAgentNameAPIRefusesHostileInput(t *testing.T) {
	b := shared
	s := b.sentinel
	ident := without(identPayloads(s), "upper")
	pathIdent := without(urlIdentPayloads(s), "upper")
	var cases []httpCase
	cases = append(cases, pathCases("agent", "GET", "/v1/resolve/", "", pathIdent, nil, "")...)
	cases = append(cases, pathCases("agent", "GET", "/v1/watch/", "", pathIdent, nil, "")...)
	cases = append(cases, pathCases("agent", "DELETE", "/v1/callbacks/", "", pathIdent, nil, "")...)
	cases = append(cases, queryCases("agent", "GET", "/v1/resolve/"+baseService, "family", "", without(ident, "empty"), "family")...)
	cases = append(cases, queryCases("agent", "GET", "/v1/resolve/"+baseService, "dc", "", without(ident, "empty"), "dc")...)
	cases = append(cases, queryCases("agent", "GET", "/v1/watch/"+baseService, "index", "", []payload{{"negative", "-1"}, {"word", "now"},
		{"overflow", "99999999999999999999"}, {"subst", "1$(touch " + s + ")"}}, "index")...)
	cases = append(cases, queryCases("agent", "GET", "/v1/watch/"+baseService, "wait", "", append(badDurations(s), payload{"too-long", "11m"}, payload{"zero", "0s"}), "wait")...)
	cb := doc(`{"service":"` + baseService + `","url":"http://127.0.0.1:9/hook"}`)
	urls := append(shellPayloads(s),
		payload{"private", "http://10.0.0.1/hook"}, payload{"metadata", "http://169.254.169.254/latest/meta-data"},
		payload{"any-address", "http://0.0.0.0:9/"}, payload{"any-v6", "http://[::]:9/"}, payload{"https", "https://127.0.0.1/"},
		payload{"file", "file:///etc/passwd"}, payload{"gopher", "gopher://127.0.0.1:25/"}, payload{"credentials", "http://u:p@127.0.0.1/"},
		payload{"lookalike", "http://localhost.example.com/"}, payload{"loopback-prefix", "http://127.0.0.1.example.com/"},
		payload{"decimal", "http://2130706433/"}, payload{"hex", "http://0x7f000001/"}, payload{"mapped-private", "http://[::ffff:10.0.0.1]/"},
		payload{"relative", "/hook"}, payload{"empty", ""}, payload{"no-host", "http:///hook"},
	)
	cases = append(cases, bodyCases("agent", "POST", "/v1/callbacks", cb, []slot{
		// The service's surrounding slashes are trimmed: "/etc/passwd" is etc/passwd.
		{field: "service", payloads: without(ident, "absolute")},
		{field: "url", payloads: urls},
	}, map[string]string{"service": "string", "url": "string"}, []string{"evil"}, 9<<20)...)
	cases = append(cases,
		httpCase{name: "/v1/callbacks wrong method", server: "agent", method: "PUT", path: "/v1/callbacks", want: http.StatusMethodNotAllowed},
		httpCase{name: "/v1/resolve wrong method", server: "agent", method: "POST", path: "/v1/resolve/" + baseService, want: http.StatusMethodNotAllowed},
	)
	markKnown(cases, validCapitalDC, "/v1/resolve/"+baseService+"?dc", "upper")
	b.runRefused(t, cases)
}

// TestArtifactServerRefusesHostileInput covers berth dev's artifact server
// (cmd/berth/internal/dev/artifactserver): downloads, uploads by PUT and POST, and
// multipart uploads; no name may reach outside its directory or be stored half.
func TestArtifactServerRefusesHostileInput(t *testing.T) {
	b := shared
	s := b.sentinel
	// Upper case is a fine file name; an absolute path names a file below the directory
	// (the leading slash is the URL's).
	names := without(urlIdentPayloads(s), "upper")
	var cases []httpCase
	for _, m := range []string{"GET", "HEAD", "PUT", "POST"} {
		var body []byte
		if m == "PUT" || m == "POST" {
			body = []byte("package bytes\n")
		}
		cases = append(cases, pathCases("artifacts", m, "/", "", names, body, "")...)
		cases = append(cases, pathCases("artifacts", m, "/dir/", "", names, body, "")...)
	}
	cases = append(cases,
		httpCase{name: "/ deep", server: "artifacts", method: "PUT", path: "/" + strings.Repeat("d/", 20) + "x", body: []byte("x"), wantIn: "levels"},
		httpCase{name: "/ long-name", server: "artifacts", method: "PUT", path: "/" + strings.Repeat("n", 300), body: []byte("x"), wantIn: "bytes"},
		httpCase{name: "/ dotfile", server: "artifacts", method: "PUT", path: "/.upload-x", body: []byte("x"), wantIn: "dot"},
		httpCase{name: "/ oversized hostile name", server: "artifacts", method: "PUT", path: "/a;touch${IFS}" + sentinelName,
			bodyFn: func() io.Reader { return io.LimitReader(zeros{}, 9<<20) }},
		httpCase{name: "/ replace with other bytes", server: "artifacts", method: "PUT", path: "/" + baseFile, body: []byte("other bytes"), want: http.StatusConflict, wantIn: "immutable"},
		httpCase{name: "/ wrong method", server: "artifacts", method: "DELETE", path: "/" + baseFile, want: http.StatusMethodNotAllowed},
		httpCase{name: "/ wrong method patch", server: "artifacts", method: "PATCH", path: "/" + baseFile, want: http.StatusMethodNotAllowed},
	)
	// Multipart uploads: a hostile file name, and a good file followed by a hostile one
	// (nothing of the request may stay).
	for _, p := range names {
		body, ct := multipartBody(t, [][2]string{{p.value, "x"}})
		cases = append(cases, httpCase{name: "/ multipart " + p.name, server: "artifacts", method: "POST", path: "/", body: body, header: http.Header{"Content-Type": {ct}}})
		body, ct = multipartBody(t, [][2]string{{"badinput-good-" + p.name + ".tar.gz", "good"}, {p.value, "x"}})
		cases = append(cases, httpCase{name: "/ multipart good then " + p.name, server: "artifacts", method: "POST", path: "/", body: body, header: http.Header{"Content-Type": {ct}}})
	}
	body, ct := multipartBody(t, [][2]string{{"badinput-first.tar.gz", "first"}, {baseFile, "other bytes"}})
	cases = append(cases,
		httpCase{name: "/ multipart good then conflict", server: "artifacts", method: "POST", path: "/", body: body, header: http.Header{"Content-Type": {ct}}, want: http.StatusConflict},
		httpCase{name: "/ multipart no file", server: "artifacts", method: "POST", path: "/", body: []byte("--x--\r\n"), header: http.Header{"Content-Type": {"multipart/form-data; boundary=x"}}},
		httpCase{name: "/ multipart truncated", server: "artifacts", method: "POST", path: "/", body: []byte("--x\r\nContent-Disposition: form-data; name=\"f\"; filename=\"t.tar.gz\"\r\n\r\nabc"), header: http.Header{"Content-Type": {"multipart/form-data; boundary=x"}}},
		httpCase{name: "/ multipart no boundary", server: "artifacts", method: "POST", path: "/", body: []byte("x"), header: http.Header{"Content-Type": {"multipart/form-data"}}},
	)
	b.runRefused(t, cases)
	// The multipart cases above that stored a good file first must not have left it.
	for _, p := range names {
		if _, err := os.Stat(filepath.Join(b.dataDir, "artifacts", "badinput-good-"+p.name+".tar.gz")); err == nil {
			t.Errorf("multipart upload refused for %q left its first file behind", p.name)
		}
	}
}

// multipartBody makes a multipart form with one file part per (name, content).
func multipartBody(t *testing.T, files [][2]string) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	for _, f := range files {
		h := textproto.MIMEHeader{}
		// The file name goes in as is (quotes and backslashes escaped as a browser does).
		h.Set("Content-Disposition", `form-data; name="file"; filename="`+strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\r", "%0D", "\n", "%0A").Replace(f[0])+`"`)
		h.Set("Content-Type", "application/gzip")
		pw, err := w.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = pw.Write([]byte(f[1]))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), w.FormDataContentType()
}

// TestAdminRefusesHostileInput covers the admin endpoints (pkg/admin): /metrics,
// /healthz, /readyz.
func TestAdminRefusesHostileInput(t *testing.T) {
	b := shared
	var cases []httpCase
	for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
		for _, m := range []string{"POST", "PUT", "DELETE", "PATCH"} {
			cases = append(cases, httpCase{name: p + " wrong method", server: "admin", method: m, path: p, body: []byte("x"), want: http.StatusMethodNotAllowed})
		}
		// "." and "a/.." below an endpoint are the endpoint itself once cleaned.
		for _, pp := range without(pathPayloads(), "dot", "dotdot-tail") {
			for _, seg := range pathSegments(pp) {
				cases = append(cases, httpCase{name: p + "/{" + seg.name + "}", server: "admin", method: "GET", path: p + "/" + seg.value})
			}
		}
	}
	for _, p := range []string{"/debug/pprof/", "/debug/vars", "/metrics/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/" + strings.Repeat("x", 8000)} {
		cases = append(cases, httpCase{name: p, server: "admin", method: "GET", path: p})
	}
	b.runRefused(t, cases)
}
