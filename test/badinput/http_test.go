package badinput

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// httpCase is one hostile request and what must come back: a 4xx (want, when set, is the
// exact status) with an error body that names the problem (wantIn, when set, must appear
// in it, case-insensitively).
type httpCase struct {
	name   string
	server string // controller, names, agent, artifacts, admin
	method string
	path   string // sent as is
	query  string // raw query
	header http.Header
	body   []byte
	// bodyFn makes a body too large to keep in the table.
	bodyFn func() io.Reader
	want   int
	wantIn string
	// known, when set, names a known defect that makes this case fail (see knownDefects).
	known string
}

func (b *berth) base(server string) string {
	switch server {
	case "controller":
		return b.controller
	case "names":
		return b.names
	case "agent":
		return b.agentAPI
	case "artifacts":
		return b.artifacts
	case "admin":
		return b.metrics
	}
	panic("unknown server " + server)
}

// batchSize is how many cases are sent at once between two reads of the state.
const batchSize = 32

// runRefused sends the cases and checks each was refused with a clear error and changed
// nothing. Cases go in concurrent batches with the state read before and after each
// batch; a batch that changed something is sent again one case at a time, so that the
// change is pinned on its case. Known defects always go one at a time.
func (b *berth) runRefused(t *testing.T, cases []httpCase) {
	t.Helper()
	seen := map[string]int{}
	names := make([]string, len(cases))
	var known, clean []int
	for i, c := range cases {
		name := c.method + " " + c.name
		if n := seen[name]; n > 0 {
			name = fmt.Sprintf("%s#%d", name, n)
		}
		seen[c.method+" "+c.name]++
		names[i] = name
		if c.known != "" {
			known = append(known, i)
		} else {
			clean = append(clean, i)
		}
	}
	httpTried.Add(int64(len(cases)))
	one := func(i int) {
		c := cases[i]
		t.Run(names[i], func(t *testing.T) {
			b.noSideEffect(t, describe(c), c.known, func() error { return b.refused(t.Context(), c) })
		})
	}
	for start := 0; start < len(clean); start += batchSize {
		batch := clean[start:min(start+batchSize, len(clean))]
		errs := make([]error, len(batch))
		problems := b.sideEffects(t, fmt.Sprintf("batch of %d cases from %s", len(batch), names[batch[0]]), func() error {
			var wg sync.WaitGroup
			for k, i := range batch {
				wg.Go(func() { errs[k] = b.refused(t.Context(), cases[i]) })
			}
			wg.Wait()
			return nil
		})
		if len(problems) > 0 {
			for _, i := range batch {
				one(i)
			}
			continue
		}
		for k, i := range batch {
			t.Run(names[i], func(t *testing.T) {
				if errs[k] != nil {
					t.Errorf("%s: %v", describe(cases[i]), errs[k])
				}
			})
		}
	}
	for _, i := range known {
		one(i)
	}
}

func describe(c httpCase) string {
	q := ""
	if c.query != "" {
		q = "?" + c.query
	}
	s := fmt.Sprintf("%s %s %.200s%.200s", c.method, c.server, c.path, q)
	if len(c.body) > 0 {
		s += fmt.Sprintf(" body %.300q", c.body)
	}
	return s
}

// refused sends c and checks the answer.
func (b *berth) refused(ctx context.Context, c httpCase) error {
	body := io.Reader(nil)
	if c.bodyFn != nil {
		body = c.bodyFn()
	} else if c.body != nil {
		body = bytes.NewReader(c.body)
	}
	h := http.Header{}
	for k, v := range c.header {
		h[k] = v
	}
	if c.body != nil && h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/json")
	}
	code, hdr, out, err := b.do(ctx, c.method, b.base(c.server), c.path, c.query, h, body)
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	// Go's ServeMux answers a path with dot segments or doubled slashes with a redirect to
	// its clean form (and the console's file server a directory with its slash). Such a
	// redirect changes nothing and stays on the server; the cleaned path is a request of
	// its own, checked like any other, so it is not followed.
	if code >= 300 && code < 400 {
		loc := hdr.Get("Location")
		base, _ := url.Parse(b.base(c.server) + "/")
		u, err := url.Parse(loc)
		if loc == "" || err != nil {
			return fmt.Errorf("got %d to %q, want 4xx or a redirect on the same server", code, loc)
		}
		if to := base.ResolveReference(u); to.Host != base.Host || to.Scheme != base.Scheme {
			return fmt.Errorf("got %d to %q (%s), want 4xx or a redirect on the same server", code, loc, to)
		}
		return nil
	}
	if code < 400 || code >= 500 {
		return fmt.Errorf("got %d %.300s, want 4xx", code, out)
	}
	if c.want != 0 && code != c.want {
		return fmt.Errorf("got %d %.300s, want %d", code, out, c.want)
	}
	if c.method == http.MethodHead {
		return nil // no body to name the problem in
	}
	return clearError(hdr.Get("Content-Type"), out, c.wantIn)
}

// clearError checks an error body: JSON with a non-empty message ("message" or "error"),
// or non-empty text; wantIn, when set, must appear in it.
func clearError(contentType string, body []byte, wantIn string) error {
	text := strings.TrimSpace(string(body))
	if text == "" {
		return fmt.Errorf("empty error body")
	}
	if strings.HasPrefix(contentType, "application/json") {
		var e struct {
			Message string `json:"message"`
			Error   string `json:"error"`
		}
		if err := json.Unmarshal(body, &e); err != nil {
			return fmt.Errorf("error body %.200q is not JSON: %v", body, err)
		}
		if strings.TrimSpace(e.Message+e.Error) == "" {
			return fmt.Errorf("error body %.200s has no message", body)
		}
	}
	// A field is named as the API spells it: max_failures, or maxFailures in protojson.
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "_", "") }
	if wantIn != "" && !strings.Contains(norm(text), norm(wantIn)) {
		return fmt.Errorf("error %.300q does not name %q", text, wantIn)
	}
	return nil
}

// doc is a JSON request body built from a base document with one value changed.
type doc string

// with returns the document with the value at path (dot separated; numbers index
// arrays; "*key" renames the only key of the map at that point) set to v; a path ending
// in "-" deletes instead of setting.
func (d doc) with(path string, v any) []byte {
	var root any
	if err := json.Unmarshal([]byte(d), &root); err != nil {
		panic(fmt.Sprintf("base document %s: %v", d, err))
	}
	root = setPath(root, strings.Split(path, "."), v)
	out, err := json.Marshal(root)
	if err != nil {
		panic(err)
	}
	return out
}

func setPath(node any, path []string, v any) any {
	if len(path) == 0 {
		return v
	}
	key := path[0]
	switch n := node.(type) {
	case map[string]any:
		if key == "*key" {
			// The map's only entry gets v (a string) as its key.
			for k, old := range n {
				delete(n, k)
				n[v.(string)] = old
			}
			return n
		}
		if len(path) == 1 && key == "-" {
			return n
		}
		n[key] = setPath(n[key], path[1:], v)
		return n
	case []any:
		i, err := strconv.Atoi(key)
		if err != nil || i >= len(n) {
			panic(fmt.Sprintf("path element %q does not index %v", key, n))
		}
		n[i] = setPath(n[i], path[1:], v)
		return n
	case nil:
		m := map[string]any{}
		m[key] = setPath(nil, path[1:], v)
		return m
	}
	panic(fmt.Sprintf("path element %q under %T", key, node))
}

// slot is one user-controlled place of a request: a JSON field, a path segment or a
// query parameter, with the hostile values it must refuse.
type slot struct {
	field    string // JSON path in the body, "path" or "query:<name>"
	payloads []payload
	wantIn   string // what the error must name; default the field's last element
}

// wrongTypes are JSON values of other types than a field's, by the field's own type.
var wrongTypes = map[string][]payload{
	"string": {{"number", "123"}, {"bool", "true"}, {"object", `{"a":1}`}, {"array", `["x"]`}},
	"flex":   {{"bool", "true"}, {"object", `{"a":1}`}, {"array", `["x"]`}},
	"uint":   {{"string", `"1"`}, {"negative", "-1"}, {"fraction", "1.5"}, {"huge", "1e100"}, {"bool", "true"}, {"object", "{}"}},
	// pint is a protojson integer, which may be quoted ("1") by the proto3 JSON mapping.
	"pint":   {{"word", `"one"`}, {"negative", "-1"}, {"fraction", "1.5"}, {"huge", "1e100"}, {"bool", "true"}, {"object", "{}"}},
	"bool":   {{"string", `"true"`}, {"number", "1"}, {"array", "[]"}},
	"number": {{"word", `"half"`}, {"bool", "true"}, {"object", "{}"}, {"array", "[]"}},
	"list":   {{"string", `"x"`}, {"number", "1"}, {"object", `{"a":"b"}`}},
	"object": {{"string", `"x"`}, {"number", "1"}, {"array", "[]"}, {"bool", "false"}},
	"map":    {{"string", `"x"`}, {"array", `["a"]`}, {"number", "1"}, {"nested", `{"a":{"b":1}}`}},
}

// malformed are bodies that are not one JSON object.
var malformed = []payload{
	{"truncated", `{"service":`},
	{"unclosed", `{"a":"b"`},
	{"garbage", `}{`},
	{"trailing", `{} x`},
	{"two-values", `{}{}`},
	{"array", `[]`},
	{"string", `"x"`},
	{"number", `1`},
	{"bom", "\ufeff{}"},
	{"single-quotes", `{'a':'b'}`},
	{"comment", `{/* x */}`},
	{"nan", `{"a":NaN}`},
	{"deep", strings.Repeat("[", 100000)},
	{"deep-object", strings.Repeat(`{"a":`, 20000)},
	{"nul", "{\x00}"},
}

// bodyCases makes the cases of one JSON endpoint: each slot's payloads in the base
// document, each typed field with values of other types, unknown fields, malformed
// bodies and an oversized one.
func bodyCases(server, method, path string, base doc, slots []slot, types map[string]string, unknown []string, oversized int) []httpCase {
	var out []httpCase
	for _, s := range slots {
		want := s.wantIn
		if want == "" {
			parts := strings.Split(s.field, ".")
			want = strings.TrimPrefix(parts[len(parts)-1], "*")
			if want == "key" || want == "0" {
				want = parts[0]
			}
		}
		for _, p := range s.payloads {
			var body []byte
			if strings.HasSuffix(s.field, "*key") {
				body = base.with(s.field, p.value)
			} else {
				body = base.with(s.field, p.value)
			}
			out = append(out, httpCase{name: path + " " + s.field + "=" + p.name, server: server, method: method, path: path, body: body, wantIn: want})
		}
	}
	for field, typ := range types {
		for _, p := range wrongTypes[typ] {
			var v any
			if err := json.Unmarshal([]byte(p.value), &v); err != nil {
				panic(err)
			}
			out = append(out, httpCase{name: path + " " + field + ":" + p.name, server: server, method: method, path: path, body: base.with(field, v)})
		}
	}
	for _, field := range unknown {
		out = append(out, httpCase{name: path + " unknown " + field, server: server, method: method, path: path, body: base.with(field, "$(touch "+shared.sentinel+")"), wantIn: field[strings.LastIndexByte(field, '.')+1:]})
	}
	for _, p := range malformed {
		out = append(out, httpCase{name: path + " malformed " + p.name, server: server, method: method, path: path, body: []byte(p.value)})
	}
	if oversized > 0 {
		out = append(out, httpCase{name: path + " oversized", server: server, method: method, path: path,
			bodyFn: func() io.Reader { return bigJSON(oversized) }})
		out = append(out, httpCase{name: path + " oversized garbage", server: server, method: method, path: path,
			bodyFn: func() io.Reader { return io.LimitReader(zeros{}, int64(oversized)) }})
	}
	return out
}

// bigJSON is a JSON object of n bytes: {"description":"aaaa..."}.
func bigJSON(n int) io.Reader {
	return io.MultiReader(strings.NewReader(`{"description":"`), io.LimitReader(letters{}, int64(n)), strings.NewReader(`"}`))
}

type letters struct{}

func (letters) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// pathCases makes the cases of one path parameter: prefix + each payload as a segment,
// percent-encoded and raw, + suffix.
func pathCases(server, method, prefix, suffix string, ps []payload, body []byte, wantIn string) []httpCase {
	var out []httpCase
	for _, p := range ps {
		for _, seg := range pathSegments(p) {
			path := prefix + seg.value + suffix
			if p.value == "" {
				continue
			}
			out = append(out, httpCase{name: prefix + "{" + seg.name + "}" + suffix, server: server, method: method, path: path, body: body, wantIn: wantIn})
		}
	}
	return out
}

// queryCases makes the cases of one query parameter.
func queryCases(server, method, path, param, other string, ps []payload, wantIn string) []httpCase {
	var out []httpCase
	for _, p := range ps {
		q := url.Values{param: {p.value}}.Encode()
		if other != "" {
			q = other + "&" + q
		}
		out = append(out, httpCase{name: path + "?" + param + "=" + p.name, server: server, method: method, path: path, query: q, wantIn: wantIn})
	}
	return out
}

// badDurations are durations no field may take.
func badDurations(sentinel string) []payload {
	return []payload{
		{"word", "soon"}, {"negative", "-1s"}, {"overflow", "1e400"}, {"nan", "NaN"}, {"inf", "Inf"}, {"neg-inf", "-Inf"},
		{"huge-seconds", "1e18"}, {"huge", "99999999999h"}, {"unit-only", "s"}, {"blank", " "},
		{"subst", "1s$(touch " + sentinel + ")"}, {"semicolon", "1s; touch " + sentinel}, {"newline", "1s\ntouch " + sentinel},
	}
}
