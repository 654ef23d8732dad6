package tmpl

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

// fuzzSecretEnv names the environment variable FuzzRender plants a secret in. It looks like
// what an operator would really keep there.
const fuzzSecretEnv = "BERTH_DB_PASSWORD"

// FuzzRender parses and renders arbitrary template text against a known set of inputs
// while the process environment and the working directory hold a secret, and checks
// that: Parse fails only with ErrInvalid; Render never panics; no output and no error
// ever carries the secret (templates have no env, file or exec function — DESIGN §10);
// every service a render read was declared by Parse (inputs are known before the first
// render); and rendering is deterministic, since the agent skips the reload only when the
// bytes are unchanged.
func FuzzRender(f *testing.F) {
	secret := "s3cr3t-" + rand.Text()
	f.Setenv(fuzzSecretEnv, secret)
	// The same secret in a file next to the test: a template must not be able to read it.
	dir := f.TempDir()
	if err := os.WriteFile(dir+"/secret.txt", []byte(secret), 0o600); err != nil {
		f.Fatal(err)
	}
	f.Chdir(dir)
	for _, s := range []string{
		`upstream search {{"{"}}{{ range service "hotel/search" }} server {{ .Address }} weight={{ .Weight }};{{ end }} }`,
		`{{ range sortBy "dc" (service "hotel/search") }}{{ .ID }} {{ .DC }} {{ .Version }} {{ join "," .Tags }}{{ end }}`,
		`{{ key "hotel/flags.json" }} {{ keyOr "missing" "default" }}`,
		`{{ toJSON (service "hotel/search") }}`,
		`{{ .Host }} {{ .DC }} {{ printf "%v %#v" . . }}`,
		`{{ define "x" }}{{ upper . }}{{ end }}{{ template "x" (trim " a ") }}`,
		`{{ with $s := service "hotel/search" }}{{ len $s }}{{ else }}none{{ end }}`,
		`{{ range $i, $e := split "," (keyOr "list" "a,b,c") }}{{ $i }}={{ replace "a" "A" $e }}{{ end }}`,
		`{{ env "` + fuzzSecretEnv + `" }}`,
		`{{ file "secret.txt" }}`,
		`{{ exec "cat" "secret.txt" }}`,
		`{{ service .Host }}`,
		`{{ key (printf "%s" "x") }}`,
		`{{ call .Host }}`,
		`{{ index (service "hotel/search") 0 }}`,
		`{{ slice (keyOr "k" "abcdef") 1 3 }} {{ html "<a>" }} {{ js "'" }} {{ urlquery "a b" }}`,
		`{{`,
		"",
	} {
		f.Add(s)
	}
	view := &namesv1.ServiceView{Service: "hotel/search", Instances: []*namesv1.Instance{
		{Id: "i-a", Ip: "10.0.0.1", Port: 8080, Dc: "dc1", Version: "1.2.3", Tags: []string{"canary"}, Health: namesv1.Health_HEALTH_HEALTHY, Weight: 10},
		{Id: "i-b", Ip: "fd00::2", Port: 8080, Dc: "dc2", Version: "1.2.2", Health: namesv1.Health_HEALTH_HEALTHY},
		{Id: "i-c", Ip: "10.0.0.3", Port: 8080, Health: namesv1.Health_HEALTH_UNHEALTHY},
	}}
	f.Fuzz(func(t *testing.T, src string) {
		if strings.Contains(src, "s3cr3t") {
			return // the fuzzer put the secret's prefix in the template itself
		}
		tp, err := Parse("fuzz.tmpl", []byte(src))
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse: got %v, want an error wrapping ErrInvalid", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("Parse error carries the secret: %v", err)
			}
			return
		}
		in := Inputs{Views: map[string]*namesv1.ServiceView{}, Keys: map[string][]byte{}}
		for _, s := range tp.Services() {
			v := proto.CloneOf(view)
			v.Service = s
			in.Views[s] = v
		}
		for _, k := range tp.Keys() {
			in.Keys[k] = []byte("value of " + k)
		}
		data := Data{Host: "h-017", DC: "dc1"}
		out, res, err := tp.Render(in, data)
		if bytes.Contains(out, []byte(secret)) {
			t.Fatalf("Render output carries the secret of $%s: %q", fuzzSecretEnv, out)
		}
		if err != nil {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("Render error carries the secret: %v", err)
			}
			return
		}
		for s := range res.Counts {
			if !contains(tp.Services(), s) {
				t.Fatalf("Render read service %q, which Parse did not declare (declared %v)", s, tp.Services())
			}
		}
		again, _, err := tp.Render(in, data)
		if err != nil || !bytes.Equal(out, again) {
			t.Fatalf("a second render of the same inputs differs: %q then %q (%v)", out, again, err)
		}
	})
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
