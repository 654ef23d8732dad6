package dev

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/run"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// DemoService is the service path the demo is deployed as.
const DemoService = "demo/hello"

// demoDeployTimeout bounds the wait for the demo's deployment.
const demoDeployTimeout = 5 * time.Minute

// demoScripts are the package's scripts, from the demo source's bin/.
var demoScripts = []string{"start", "stop", "health", "reload"}

// demoPortLine is berth.yaml's port line, which --demo-port replaces.
var demoPortLine = regexp.MustCompile(`(?m)^port:[ \t]*[0-9]+[ \t]*$`)

// startDemo, with --demo, finds the demo's sources now (so that a wrong --demo-src fails
// the start) and adds the part that deploys the demo once everything is up: build the app
// with Go, pack it with its scripts and berth.yaml into the artifacts directory, create the
// tree node and deploy it through the controller to the local agent, then print the
// commands that show the result. A failure of the demo is printed; berth dev keeps running.
func startDemo(ctx context.Context, e *env, g *run.Group) error {
	if !e.cfg.Demo {
		return nil
	}
	src, err := findDemoSource(e.cfg.DemoSource)
	if err != nil {
		return err
	}
	port := e.cfg.DemoPort
	if port == 0 {
		if port, err = freePort(e.cfg.Host); err != nil {
			return fmt.Errorf("pick a port for the demo: %w", err)
		}
	}
	d := &demo{e: e, src: src, port: port, out: e.cfg.Out}
	g.Add("demo", func(ctx context.Context) error {
		select {
		case <-e.up:
		case <-ctx.Done():
			return nil
		}
		if err := d.run(ctx); err != nil && ctx.Err() == nil {
			fmt.Fprintf(d.out, "demo: %v\n", err)
			fmt.Fprintln(d.out, "demo: berth dev keeps running; fix the cause and run berth dev --demo again")
		}
		<-ctx.Done()
		return nil
	})
	return nil
}

// findDemoSource returns the demo's source directory: dir when given, else examples/demo
// in the working directory or its nearest parent that has one, else the one of the checkout
// this binary was built from.
func findDemoSource(dir string) (string, error) {
	check := func(d string) error {
		for _, f := range []string{"main.go", "berth.yaml", "VERSION"} {
			if _, err := os.Stat(filepath.Join(d, f)); err != nil {
				return fmt.Errorf("demo source %s: %w", d, err)
			}
		}
		return nil
	}
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", err
		}
		if err := check(abs); err != nil {
			return "", fmt.Errorf("--demo-src: %w", err)
		}
		return abs, nil
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			cand := filepath.Join(d, "examples", "demo")
			if check(cand) == nil {
				return cand, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	// This file is cmd/berth/internal/dev/demo.go of the checkout the binary was built from
	// (unless built with -trimpath).
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		cand := filepath.Join(filepath.Dir(file), "..", "..", "..", "..", "examples", "demo")
		if check(cand) == nil {
			return filepath.Clean(cand), nil
		}
	}
	return "", errors.New("--demo: cannot find examples/demo (run berth dev from the Berth checkout, or pass --demo-src DIR)")
}

// freePort returns a TCP port that was free on host a moment ago.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// demo is one run of the demo.
type demo struct {
	e    *env
	src  string
	port int
	out  io.Writer
	// hc talks to the controller, the name service and the app; its idle connections are
	// closed when the run ends.
	hc *http.Client
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "demo: "+format+"\n", args...)
}

func (d *demo) run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, demoDeployTimeout)
	defer cancel()
	clientTLS, err := d.e.clientTLS()
	if err != nil {
		return err
	}
	d.hc = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 2, TLSClientConfig: clientTLS}}
	defer d.hc.CloseIdleConnections()
	pkg, err := d.pack(ctx)
	if err != nil {
		return err
	}
	deps, err := d.deployments(ctx)
	if err != nil {
		return err
	}
	var id string
	for _, dep := range deps {
		if !terminal(dep.GetStatus().GetState()) && dep.GetVersion() == pkg.version {
			id = dep.GetId()
			d.say("deployment %s of %s %s is already under way; following it", id, DemoService, pkg.version)
			break
		}
	}
	if id == "" {
		for _, dep := range deps {
			if dep.GetStatus().GetState() != "succeeded" {
				continue
			}
			if dep.GetVersion() == pkg.version && d.appAnswers(ctx) {
				d.say("%s %s is already deployed (deployment %s); nothing to do", DemoService, pkg.version, dep.GetId())
				return d.ready(ctx, dep.GetId(), pkg.version)
			}
			break
		}
		if id, err = d.deploy(ctx, pkg); err != nil {
			return err
		}
	}
	dep, err := d.follow(ctx, id)
	if err != nil {
		return err
	}
	if s := dep.GetStatus().GetState(); s != "succeeded" {
		for _, t := range dep.GetTargets() {
			d.say("  %s: %s %s", t.GetHost(), t.GetState(), t.GetMessage())
			for _, l := range t.GetOutput() {
				d.say("    %s", l)
			}
		}
		return fmt.Errorf("deployment %s ended %s: %s (see %s)", id, s, dep.GetStatus().GetMessage(), d.cli("deployments show "+id))
	}
	return d.ready(ctx, id, pkg.version)
}

// demoPackage is the packed demo.
type demoPackage struct {
	version, name, path, sha256 string
}

// pack builds the app and packs it, unless the package of this version is already in the
// artifacts directory. The version is VERSION plus a digest of everything the package is
// made of (sources, scripts, berth.yaml, port, Go version), so an edit deploys a new version
// and an unchanged demo is the same version. The archive is byte-for-byte reproducible.
func (d *demo) pack(ctx context.Context) (demoPackage, error) {
	goBin, err := findGo()
	if err != nil {
		return demoPackage{}, err
	}
	goVersion, err := exec.CommandContext(ctx, goBin, "env", "GOVERSION").Output()
	if err != nil {
		return demoPackage{}, fmt.Errorf("%s env GOVERSION: %w", goBin, err)
	}
	base, err := os.ReadFile(filepath.Join(d.src, "VERSION"))
	if err != nil {
		return demoPackage{}, err
	}
	ver := strings.TrimSpace(string(base))
	if ver == "" || strings.ContainsAny(ver, " /\\\t\n") {
		return demoPackage{}, fmt.Errorf("%s: %q is not a version (letters, digits, . _ + -)", filepath.Join(d.src, "VERSION"), ver)
	}
	desc, err := os.ReadFile(filepath.Join(d.src, "berth.yaml"))
	if err != nil {
		return demoPackage{}, err
	}
	if !demoPortLine.Match(desc) {
		return demoPackage{}, fmt.Errorf("%s has no port line to set to --demo-port", filepath.Join(d.src, "berth.yaml"))
	}
	desc = demoPortLine.ReplaceAll(desc, []byte("port: "+strconv.Itoa(d.port)))

	sources, err := filepath.Glob(filepath.Join(d.src, "*.go"))
	if err != nil {
		return demoPackage{}, err
	}
	sources = slices.DeleteFunc(sources, func(s string) bool { return strings.HasSuffix(s, "_test.go") })
	slices.Sort(sources)
	h := sha256.New()
	add := func(name string, data []byte) {
		fmt.Fprintf(h, "%s %d\n", name, len(data))
		h.Write(data)
	}
	add("berth.yaml", desc)
	add("go", bytes.TrimSpace(goVersion))
	add("version", []byte(ver))
	for _, s := range sources {
		b, err := os.ReadFile(s)
		if err != nil {
			return demoPackage{}, err
		}
		add(filepath.Base(s), b)
	}
	scripts := map[string][]byte{}
	for _, s := range demoScripts {
		b, err := os.ReadFile(filepath.Join(d.src, "bin", s))
		if err != nil {
			return demoPackage{}, fmt.Errorf("demo script: %w", err)
		}
		scripts[s] = b
		add("bin/"+s, b)
	}
	version := ver + "-" + hex.EncodeToString(h.Sum(nil))[:8]
	pkg := demoPackage{version: version, name: "demo-hello-" + version + ".tar.gz"}
	pkg.path = filepath.Join(d.e.artifactsDir, pkg.name)
	if sum, err := fileSHA256(pkg.path); err == nil {
		pkg.sha256 = sum
		d.say("package %s is in the artifacts directory already", pkg.name)
		return pkg, nil
	}

	d.say("building %s %s from %s", DemoService, version, d.src)
	started := time.Now()
	tmp, err := os.MkdirTemp(d.e.cfg.DataDir, ".demo-build-")
	if err != nil {
		return demoPackage{}, err
	}
	defer os.RemoveAll(tmp)
	app := filepath.Join(tmp, "app")
	args := []string{"build", "-trimpath", "-ldflags", "-s -w -X main.version=" + version, "-o", app}
	for _, s := range sources {
		args = append(args, filepath.Base(s))
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = d.src
	// The demo is a program of its own (no module): build it outside the workspace, static.
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return demoPackage{}, fmt.Errorf("go build of %s: %w\n%s", d.src, err, bytes.TrimSpace(out))
	}
	appBytes, err := os.ReadFile(app)
	if err != nil {
		return demoPackage{}, err
	}

	var buf bytes.Buffer
	if err := writeDemoArchive(&buf, desc, appBytes, scripts); err != nil {
		return demoPackage{}, fmt.Errorf("pack the demo: %w", err)
	}
	sum := sha256.Sum256(buf.Bytes())
	pkg.sha256 = hex.EncodeToString(sum[:])
	if err := writeFileAtomic(pkg.path, buf.Bytes()); err != nil {
		return demoPackage{}, fmt.Errorf("store the demo package: %w", err)
	}
	d.say("built and packed %s (%d KiB) in %s into %s", pkg.name, buf.Len()>>10, time.Since(started).Round(100*time.Millisecond), d.e.artifactsDir)
	return pkg, nil
}

// writeDemoArchive writes the package: berth.yaml, bin/app and the scripts, with fixed
// times and owners so that the same inputs give the same bytes.
func writeDemoArchive(w io.Writer, desc, app []byte, scripts map[string][]byte) error {
	gz, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(gz)
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatUSTAR}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := file("berth.yaml", 0o644, desc); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755, ModTime: mtime, Format: tar.FormatUSTAR}); err != nil {
		return err
	}
	if err := file("bin/app", 0o755, app); err != nil {
		return err
	}
	for _, s := range demoScripts {
		if err := file("bin/"+s, 0o755, scripts[s]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

// writeFileAtomic writes data to a hidden temporary file beside path, syncs it and renames
// it into place, so that the artifact server never serves half a file.
func writeFileAtomic(path string, data []byte) error {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(path), ".demo-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// findGo returns the go command: on PATH, else in $GOROOT/bin, else in /usr/local/go/bin
// (where the Go distribution installs).
func findGo() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	for _, root := range []string{os.Getenv("GOROOT"), "/usr/local/go"} {
		if root == "" {
			continue
		}
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("--demo builds the demo app with Go, and no go command is on PATH (install Go 1.26, or put it on PATH)")
}

// call sends a JSON request to the controller and decodes a JSON answer into out (a proto
// message or anything encoding/json takes); nil out discards it.
func (d *demo) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.e.controllerURL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Berth-User", "berth-dev-demo")
	if tok := os.Getenv("BERTH_TOKEN"); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var ae struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(b, &ae) == nil && ae.Message != "" {
			return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, ae.Message)
		}
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *controllerv1.Deployment:
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, o); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
		return nil
	default:
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
		return nil
	}
}

// deployments lists the demo's deployments, newest first.
func (d *demo) deployments(ctx context.Context) ([]*controllerv1.Deployment, error) {
	var raw struct {
		Deployments []json.RawMessage `json:"deployments"`
	}
	if err := d.call(ctx, http.MethodGet, "/v1/deployments?service="+url.QueryEscape(DemoService)+"&limit=20", nil, &raw); err != nil {
		return nil, err
	}
	out := make([]*controllerv1.Deployment, 0, len(raw.Deployments))
	for _, r := range raw.Deployments {
		dep := &controllerv1.Deployment{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(r, dep); err != nil {
			return nil, fmt.Errorf("decode deployment list: %w", err)
		}
		out = append(out, dep)
	}
	return out, nil
}

// deploy creates the tree node bound to this host and requests the deployment, behind any
// deployment of the demo still running.
func (d *demo) deploy(ctx context.Context, pkg demoPackage) (string, error) {
	node := map[string]any{"hosts": []string{d.e.hostID}, "description": "the demo of berth dev --demo (examples/demo)"}
	if err := d.call(ctx, http.MethodPatch, "/v1/tree/"+DemoService, node, nil); err != nil {
		return "", fmt.Errorf("create the tree node %s: %w", DemoService, err)
	}
	req := map[string]any{
		"service":  DemoService,
		"version":  pkg.version,
		"mode":     "package",
		"artifact": map[string]string{"url": d.artifactBase() + "/" + pkg.name, "sha256": pkg.sha256},
		"hosts":    []string{d.e.hostID},
		"strategy": map[string]any{"batches": []any{1, "100%"}},
		"queue":    true,
	}
	dep := &controllerv1.Deployment{}
	if err := d.call(ctx, http.MethodPost, "/v1/deployments", req, dep); err != nil {
		return "", fmt.Errorf("deploy %s %s: %w", DemoService, pkg.version, err)
	}
	d.say("deploying %s %s to %s from %s (ramp 1, 100%%): deployment %s", DemoService, pkg.version, d.e.hostID, d.artifactBase()+"/"+pkg.name, dep.GetId())
	return dep.GetId(), nil
}

// follow long-polls the deployment until it ends, saying each change of state.
func (d *demo) follow(ctx context.Context, id string) (*controllerv1.Deployment, error) {
	var (
		rev  int64
		last string
	)
	for {
		dep := &controllerv1.Deployment{}
		path := "/v1/deployments/" + url.PathEscape(id) + "?wait=20s&after_revision=" + strconv.FormatInt(rev, 10)
		if err := d.call(ctx, http.MethodGet, path, nil, dep); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("deployment %s not done within %s: %w", id, demoDeployTimeout, ctx.Err())
			}
			return nil, err
		}
		rev = dep.GetRevision()
		st := dep.GetStatus()
		now := st.GetState()
		if c := st.GetCounts(); c != nil {
			now = fmt.Sprintf("%s (%d of %d targets succeeded)", st.GetState(), c.GetSucceeded(), c.GetTotal())
		}
		if now != last {
			d.say("deployment %s %s", id, now)
			last = now
		}
		if terminal(st.GetState()) {
			return dep, nil
		}
	}
}

func terminal(state string) bool {
	switch state {
	case "succeeded", "failed", "aborted", "rolled_back":
		return true
	}
	return false
}

// appAnswers reports whether the demo app answers its health check now.
func (d *demo) appAnswers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.appURL()+"healthz", nil)
	if err != nil {
		return false
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (d *demo) appURL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(d.port)) + "/"
}

// cli is a berth command line, with the endpoint flags it needs when berth dev does not run
// on the CLI's default ports.
func (d *demo) cli(args string) string {
	s := "berth " + args
	if strings.HasPrefix(args, "deployments") && d.e.controllerURL != fmt.Sprintf("http://%s:%d", DefaultHost, DefaultControllerPort) {
		s += " --controller " + d.e.controllerURL
	}
	if strings.HasPrefix(args, "resolve") && d.e.namesURL != fmt.Sprintf("http://%s:%d", DefaultHost, DefaultNamesPort) {
		s += " --names " + d.e.namesURL
	}
	return s
}

// ready waits (briefly) until the name service resolves the demo, then prints the commands
// that show the result.
func (d *demo) ready(ctx context.Context, id, version string) error {
	deadline := time.Now().Add(30 * time.Second)
	for !d.resolvable(ctx) {
		if time.Now().After(deadline) {
			d.say("the name service does not list an instance of %s yet; the agent registers it once its health passes", DemoService)
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	host, port, _ := net.SplitHostPort(d.e.dnsAddr)
	labels := strings.Split(DemoService, "/")
	slices.Reverse(labels)
	name := strings.Join(labels, ".") + ".ns.berth.internal"
	var b strings.Builder
	fmt.Fprintf(&b, "demo: %s %s is deployed (deployment %s). See it with:\n", DemoService, version, id)
	fmt.Fprintf(&b, "  %s\n", d.cli("deployments show "+id))
	fmt.Fprintf(&b, "  %s\n", d.cli("resolve "+DemoService))
	fmt.Fprintf(&b, "  dig @%s -p %s %s\n", host, port, name)
	fmt.Fprintf(&b, "  curl %s\n", d.appURL())
	fmt.Fprintf(&b, "  the console: %s/ui/\n", d.e.controllerURL)
	fmt.Fprintf(&b, "demo: edit %s and run berth dev --demo again to deploy a new version\n", filepath.Join(d.src, "main.go"))
	_, err := io.WriteString(d.out, b.String())
	return err
}

// resolvable reports whether the name service answers at least one instance of the demo.
func (d *demo) resolvable(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.e.namesURL+"/v1/resolve/"+DemoService, nil)
	if err != nil {
		return false
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var res struct {
		Instances []json.RawMessage `json:"instances"`
	}
	return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&res) == nil && len(res.Instances) > 0
}

// artifactBase is where the agent fetches the demo package: the artifact server's HTTP,
// or its FTP under --tls (the agent trusts only the system's CAs and has no client
// certificate for the artifact server).
func (d *demo) artifactBase() string {
	if d.e.cfg.TLSDir != "" {
		return d.e.ftpURL
	}
	return d.e.artifactsURL
}
