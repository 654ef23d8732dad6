package cli

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/berthdev/berth/cmd/berth/internal/natsconf"
	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
	coordsrv "github.com/berthdev/berth/services/coord"
	controller "github.com/berthdev/berth/services/task-controller"
)

// guardedController runs a real controller (one-member coord, NATS) whose API takes
// tokens and serves mutual TLS; it returns the API's https URL.
func guardedController(t *testing.T, tokensFile string, tlsFiles certs.Files) string {
	t.Helper()
	dir := t.TempDir()
	ns := natstest.RunServer(t)
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := coordsrv.New(coordsrv.Config{Name: "c1", DataDir: filepath.Join(dir, "coord"), ClientListener: cl, PeerListener: pl,
		InitialCluster: "c1=" + pl.Addr().String(), HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		RequestTimeout: 2 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var stops []func()
	t.Cleanup(func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	})
	goRun := func(name string, run func(ctx context.Context) error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(ctx) }()
		stops = append(stops, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
	goRun("coord", srv.Run)
	cc, err := coordclient.New(context.Background(), coordclient.Config{Endpoints: []string{cl.Addr().String()}, RequestTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	stops = append(stops, func() { cc.Close() })
	bus, err := natsbus.Connect(context.Background(), natsbus.Config{URLs: []string{ns.URL()}, Name: "cli-test"})
	if err != nil {
		t.Fatal(err)
	}
	stops = append(stops, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = bus.Close(ctx)
	})
	ccfg := controller.DefaultConfig()
	ccfg.Listen, ccfg.Replica, ccfg.SessionTTL, ccfg.NamesURL = "127.0.0.1:0", "cli-test", time.Second, ""
	ccfg.TokensFile, ccfg.HTTPTLS = tokensFile, tlsFiles
	c, err := controller.New(ccfg, controller.Deps{Bus: bus, Coord: cc})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := c.Listen()
	if err != nil {
		t.Fatal(err)
	}
	goRun("controller", c.Run)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := cc.Leader(t.Context(), "controller"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no controller leader")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "https://" + addr.String()
}

// TestCLIAgainstGuardedController runs berth commands against a controller with tokens
// and mutual TLS: each missing piece gets an error that says what to set.
func TestCLIAgainstGuardedController(t *testing.T) {
	t.Setenv(envConfigFile, filepath.Join(t.TempDir(), "config.yaml"))
	for _, v := range []string{envToken, envCAFile, envCertFile, envKeyFile, envContext, envControllerURL} {
		t.Setenv(v, "")
	}
	pki := filepath.Join(t.TempDir(), "pki")
	if _, err := certs.Init(certs.Options{Dir: pki, Services: []string{"controller", "berth"}}); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(pki, certs.CACertFile)
	root, _ := apitoken.New()
	other, _ := apitoken.New()
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	file := "tokens:\n" + apitoken.FormatEntry("ops", apitoken.Admin, []string{"/"}, root) + apitoken.FormatEntry("flightdev", apitoken.Deployer, []string{"flight"}, other)
	if err := os.WriteFile(tokens, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	url := guardedController(t, tokens, certs.Files{CertFile: filepath.Join(pki, "controller.crt"), KeyFile: filepath.Join(pki, "controller.key"), TrustedCAFile: ca})
	run := func(args ...string) (string, error) {
		t.Helper()
		return runBerth(t.Context(), t, append(args, "--controller", url)...)
	}
	deploy := []string{"deploy", "acc/web", "--version", "1.0.0", "--package", "file:///x.tar.gz", "--sha256", strings.Repeat("a", 64), "--hosts", "h1"}

	steps := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no CA", nil, []string{"deployments", "ls"}, "not signed by a CA this CLI trusts; set ca_file"},
		{"no client certificate", map[string]string{envCAFile: ca}, []string{"deployments", "ls"}, "requires a client certificate of its CA; set cert_file and key_file"},
		{"no token", map[string]string{envCertFile: filepath.Join(pki, "berth.crt"), envKeyFile: filepath.Join(pki, "berth.key")}, deploy,
			"requires an API token (401: no API token"},
		{"a token outside its scope", map[string]string{envToken: other}, deploy, "refused this (403): token flightdev (deployer of flight) may not act on service acc/web"},
		{"an unknown token", map[string]string{envToken: "berth_nope"}, []string{"deployments", "ls"}, "the API token sent was not accepted"},
	}
	for _, s := range steps {
		for k, v := range s.env {
			t.Setenv(k, v)
		}
		out, err := run(s.args...)
		if err == nil || !strings.Contains(err.Error(), s.want) {
			t.Fatalf("%s: berth %s: got %v (%s), want an error containing %q", s.name, strings.Join(s.args, " "), err, out, s.want)
		}
	}
	t.Setenv(envToken, root)
	if out, err := run("tree", "set", "acc/web"); err != nil {
		t.Fatalf("with CA, certificate and an admin token: tree set: %v: %s", err, out)
	}
	if out, err := run("deployments", "ls"); err != nil || !strings.HasPrefix(out, "ID") {
		t.Fatalf("deployments ls: %v: %q", err, out)
	}
	// The same through a context instead of the environment.
	for _, v := range []string{envToken, envCAFile, envCertFile, envKeyFile} {
		t.Setenv(v, "")
	}
	if out, err := runCLI(t, root+"\n", "context", "set", "secure", "--controller", url, "--ca-file", ca, "--cert-file", filepath.Join(pki, "berth.crt"),
		"--key-file", filepath.Join(pki, "berth.key"), "--token-stdin", "--use"); err != nil {
		t.Fatalf("context set: %v: %s", err, out)
	}
	if out, err := runBerth(t.Context(), t, "deployments", "ls"); err != nil || !strings.HasPrefix(out, "ID") {
		t.Fatalf("deployments ls through the context: %v: %q", err, out)
	}
	if _, err := runCLI(t, "", "context", "set", "secure", "--unset", "key_file"); err == nil || !strings.Contains(err.Error(), "cert_file and key_file") {
		t.Fatalf("context with a certificate and no key: got %v, want an error", err)
	}
}

func TestTokenCommands(t *testing.T) {
	out, err := runCLI(t, "", "token", "new", "--name", "alice", "--role", "deployer", "--scope", "hotel", "--scope", "/flight/")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	tok := lines[len(lines)-1]
	if !strings.HasPrefix(tok, apitoken.Prefix) {
		t.Fatalf("token new: last line %q, want the token", tok)
	}
	entry := strings.Join(lines[:len(lines)-1], "\n")
	set, err := apitoken.Parse("printed", []byte("tokens:\n"+strings.SplitN(entry, "\n", 2)[1]+"\n"))
	if err != nil {
		t.Fatalf("the printed entry is not a valid token file entry: %v\n%s", err, entry)
	}
	e, ok := set.Lookup(tok)
	if !ok || e.Name != "alice" || e.Role != apitoken.Deployer || !e.Covers("flight/search") || e.Covers("train") {
		t.Fatalf("printed entry: got %+v, %v", e, ok)
	}
	if strings.Contains(entry, tok) {
		t.Fatal("the printed entry holds the token itself")
	}
	hashed, err := runCLI(t, tok+"\n", "token", "hash")
	if err != nil || strings.TrimSpace(hashed) != apitoken.Hash(tok) {
		t.Fatalf("token hash: got %q, %v; want %s", hashed, err, apitoken.Hash(tok))
	}
	if _, err := runCLI(t, "", "token", "new", "--name", "a", "--role", "root", "--scope", "/"); err == nil || !strings.Contains(err.Error(), "viewer, deployer or admin") {
		t.Fatalf("token new with a bad role: got %v", err)
	}
}

// TestEventsFromSecuredNATS reads events from a nats-server running the configuration of
// `berth certs nats-config`, as the berth user.
func TestEventsFromSecuredNATS(t *testing.T) {
	t.Setenv(envConfigFile, filepath.Join(t.TempDir(), "config.yaml"))
	for _, v := range []string{envCAFile, envCertFile, envKeyFile, envNATSSeed, envContext} {
		t.Setenv(v, "")
	}
	pki := filepath.Join(t.TempDir(), "pki")
	if _, err := certs.Init(certs.Options{Dir: pki}); err != nil {
		t.Fatal(err)
	}
	if _, err := natsconf.Write(natsconf.Options{Dir: pki, Listen: "127.0.0.1:-1", StoreDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(filepath.Join(pki, natsconf.ConfFile))
	if err != nil {
		t.Fatal(err)
	}
	opts.NoLog, opts.NoSigs = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	url := "tls://" + srv.Addr().String()
	ca := filepath.Join(pki, certs.CACertFile)
	// The controller makes the streams and publishes one event.
	ccfg := natsbus.Config{URLs: []string{url}, Name: "controller"}
	if err := (natsbus.Auth{CertFile: filepath.Join(pki, "controller.crt"), KeyFile: filepath.Join(pki, "controller.key"), TrustedCAFile: ca,
		NKeySeedFile: filepath.Join(pki, "nats", "controller.nk"), InboxPrefix: natsconf.Inbox("controller")}).Apply(&ccfg); err != nil {
		t.Fatal(err)
	}
	ctrl, err := natsbus.Connect(t.Context(), ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close(context.Background())
	if err := ctrl.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	subject, _ := subjects.DeployEvent("requested", "acc/web")
	if err := ctrl.PublishEvent(t.Context(), natsbus.Event{Subject: subject, ID: "e1", Type: subjects.EventType(subjects.DomainDeploy, "requested"),
		Source: "test", Data: &eventsv1.DeployEvent{DeploymentId: "d-1", Service: "acc/web"}}); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envCAFile, ca)
	t.Setenv(envCertFile, filepath.Join(pki, "berth.crt"))
	t.Setenv(envKeyFile, filepath.Join(pki, "berth.key"))
	if _, err := runBerth(t.Context(), t, "events", "--nats", url); err == nil {
		t.Fatal("events without the berth user's seed: got no error, want the login refused")
	}
	t.Setenv(envNATSSeed, filepath.Join(pki, "nats", "berth.nk"))
	out, err := runBerth(t.Context(), t, "events", "--json", "--nats", url)
	if err != nil || !strings.Contains(out, `"d-1"`) {
		t.Fatalf("events as the berth user: got %v: %s; want the deploy event", err, out)
	}
}
