package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func init() {
	// No test of this package reads the configuration of the person running it; tests that
	// want one set $BERTH_CONFIG_FILE themselves.
	os.Setenv(envConfigFile, filepath.Join(string(filepath.Separator), "nonexistent", "berth-cli-test", "config.yaml"))
}

// runCLI runs berth with args and returns what it printed.
func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// recorder is an HTTP API that answers every request with an empty list and remembers
// the Authorization header of each.
type recorder struct {
	srv  *httptest.Server
	mu   sync.Mutex
	auth []string
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.auth = append(r.auth, req.Header.Get("Authorization"))
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"deployments": [], "services": [], "instances": []}`))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.auth
	r.auth = nil
	return a
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envConfigFile, p)
	return p
}

// TestPrecedence checks flag > environment > context > default for the controller URL and
// the token, and which context is selected.
func TestPrecedence(t *testing.T) {
	flagSrv, envSrv, ctxA, ctxB := newRecorder(t), newRecorder(t), newRecorder(t), newRecorder(t)
	writeConfig(t, `current_context: a
contexts:
  a: {controller: `+ctxA.srv.URL+`, token: tok-a}
  b:
    controller: `+ctxB.srv.URL+`
    token: tok-b
`)
	servers := map[string]*recorder{"flag": flagSrv, "env": envSrv, "a": ctxA, "b": ctxB}
	cases := []struct {
		name     string
		args     []string
		env      map[string]string
		wantSrv  string
		wantAuth string
	}{
		{"flag beats env and context", []string{"--controller", flagSrv.srv.URL}, map[string]string{envControllerURL: envSrv.srv.URL}, "flag", "Bearer tok-a"},
		{"env beats context", nil, map[string]string{envControllerURL: envSrv.srv.URL}, "env", "Bearer tok-a"},
		{"current context", nil, nil, "a", "Bearer tok-a"},
		{"--context picks another", []string{"--context", "b"}, nil, "b", "Bearer tok-b"},
		{"$BERTH_CONTEXT picks another", nil, map[string]string{envContext: "b"}, "b", "Bearer tok-b"},
		{"--context beats $BERTH_CONTEXT", []string{"--context", "a"}, map[string]string{envContext: "b"}, "a", "Bearer tok-a"},
		{"$BERTH_TOKEN beats the context's token", nil, map[string]string{envToken: "tok-env"}, "a", "Bearer tok-env"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			args := append([]string{"deployments", "ls"}, c.args...)
			if out, err := runCLI(t, "", args...); err != nil {
				t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			for name, s := range servers {
				got := s.take()
				switch {
				case name == c.wantSrv && (len(got) != 1 || got[0] != c.wantAuth):
					t.Errorf("%s server: got requests with Authorization %q, want one with %q", name, got, c.wantAuth)
				case name != c.wantSrv && len(got) != 0:
					t.Errorf("%s server: got %d requests, want none (the %s server should answer)", name, len(got), c.wantSrv)
				}
			}
		})
	}

	// The name service's commands resolve alike and send the token too.
	names := newRecorder(t)
	t.Setenv(envNamesURL, names.srv.URL)
	if out, err := runCLI(t, "", "status", "--coord", "127.0.0.1:1", "--timeout", "1s", "--json"); err == nil {
		t.Fatalf("status with coord unreachable: got nil error\n%s", out)
	}
	if got := names.take(); len(got) != 1 || got[0] != "Bearer tok-a" {
		t.Fatalf("name service: got requests with Authorization %q, want one with Bearer tok-a", got)
	}
}

// TestContextShowSources checks every setting's value and source, defaults included.
func TestContextShowSources(t *testing.T) {
	writeConfig(t, "current_context: dev\ncontexts:\n  dev:\n    names: http://names.example:7071\n    coord: 10.0.0.1:7379, 10.0.0.2:7379\n")
	t.Setenv(envNATSURL, "nats://env.example:4222")
	out, err := runCLI(t, "", "context", "show", "--json")
	if err != nil {
		t.Fatalf("context show: %v\n%s", err, out)
	}
	var got struct {
		Context  string              `json:"context"`
		Settings map[string]resolved `json:"settings"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("context show --json: %v\n%s", err, out)
	}
	want := map[string]resolved{
		"controller": {"http://127.0.0.1:7070", "default"},
		"names":      {"http://names.example:7071", "context dev"},
		"coord":      {"10.0.0.1:7379,10.0.0.2:7379", "context dev"},
		"nats":       {"nats://env.example:4222", "$" + envNATSURL},
		"token":      {"", "default"},
	}
	for k, w := range want {
		if got.Settings[k] != w {
			t.Errorf("%s: got %+v, want %+v", k, got.Settings[k], w)
		}
	}
	if got.Context != "dev" {
		t.Errorf("context: got %q, want dev", got.Context)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name, file string
		args       []string
		want       []string
	}{
		{"unknown --context", "contexts:\n  a: {}\n", []string{"--context", "nope", "deployments", "ls"}, []string{`context "nope" (from --context)`, "contexts: a", "berth context set nope"}},
		{"current names a missing context", "current_context: gone\n", []string{"deployments", "ls"}, []string{`context "gone" (from current_context)`, "none yet"}},
		{"unknown field", "contexts:\n  a:\n    controler: http://x\n", []string{"deployments", "ls"}, []string{"config.yaml", "line 3", "controler", "want controller, names, coord, nats, token"}},
		{"bad URL in the file", "contexts:\n  a:\n    controller: ftp://x\n", []string{"tree", "ls"}, []string{"context a", "controller \"ftp://x\"", "http://"}},
		{"bad context name", "contexts:\n  'a b': {}\n", []string{"hosts", "ls"}, []string{`context name "a b"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			writeConfig(t, c.file)
			out, err := runCLI(t, "", c.args...)
			if err == nil {
				t.Fatalf("berth %s: got nil error, want one\n%s", strings.Join(c.args, " "), out)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestUnreachableSaysWhatToDo(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	_, err := runCLI(t, "", "deployments", "ls", "--controller", url)
	want := "cannot reach the controller at " + url
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "is `berth dev` running? set --controller, or pick a context with `berth context use`") {
		t.Fatalf("deployments ls against a closed port: got %v, want %q and what to do", err, want)
	}
	_, err = runCLI(t, "", "resolve", "demo/hello", "--names", url)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the name service at "+url) || !strings.Contains(err.Error(), "set --names") {
		t.Fatalf("resolve against a closed port: got %v, want the name service's hint", err)
	}
}
