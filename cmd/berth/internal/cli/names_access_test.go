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

	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	coordsrv "github.com/berthdev/berth/services/coord"
	nameservice "github.com/berthdev/berth/services/name-service"
)

// guardedNames runs a real name service (one-member coord, NATS) whose API takes the
// tokens of tokensFile; it returns the API's URL.
func guardedNames(t *testing.T, tokensFile string) string {
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
	if err := bus.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	cfg := nameservice.DefaultConfig()
	cfg.DNSAddr, cfg.HTTPAddr, cfg.TokensFile = "127.0.0.1:0", "127.0.0.1:0", tokensFile
	s, err := nameservice.New(cfg, nameservice.Deps{Bus: bus, Coord: cc})
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	goRun("name service", s.Run)
	deadline := time.Now().Add(15 * time.Second)
	for s.Ready(t.Context()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("name service not ready in 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "http://" + addrs.HTTP.String()
}

// TestCLIAgainstGuardedNames runs berth traffic and berth watch against a name service
// with tokens: the CLI sends its token, and a 401 or 403 says what to do.
func TestCLIAgainstGuardedNames(t *testing.T) {
	t.Setenv(envConfigFile, filepath.Join(t.TempDir(), "config.yaml"))
	for _, v := range []string{envToken, envContext, envNamesURL, envCAFile, envCertFile, envKeyFile} {
		t.Setenv(v, "")
	}
	alice, _ := apitoken.New()
	bob, _ := apitoken.New()
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	file := "tokens:\n" + apitoken.FormatEntry("alice", apitoken.Deployer, []string{"hotel"}, alice) + apitoken.FormatEntry("bob", apitoken.Deployer, []string{"flight"}, bob)
	if err := os.WriteFile(tokens, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	url := guardedNames(t, tokens)
	run := func(ctx context.Context, args ...string) (string, error) {
		t.Helper()
		return runBerth(ctx, t, append(args, "--names", url)...)
	}
	set := []string{"traffic", "set", "hotel/search", "--panic-threshold", "50"}
	steps := []struct {
		name, token string
		args        []string
		want        string
	}{
		{"no token", "", set, "requires an API token (401: no API token"},
		{"an unknown token", "berth_nope", set, "the API token sent was not accepted"},
		{"a token outside its scope", bob, set, "refused this (403): token bob (deployer of flight) may not act on service hotel/search"},
		{"watch without a token", "", []string{"watch", "hotel/search"}, "requires an API token (401: no API token"},
	}
	for _, s := range steps {
		t.Setenv(envToken, s.token)
		out, err := run(t.Context(), s.args...)
		if err == nil || !strings.Contains(err.Error(), s.want) {
			t.Fatalf("%s: berth %s: got %v (%s), want an error containing %q", s.name, strings.Join(s.args, " "), err, out, s.want)
		}
	}
	t.Setenv(envToken, alice)
	if out, err := run(t.Context(), set...); err != nil {
		t.Fatalf("traffic set with alice's token: %v: %s", err, out)
	}
	if out, err := run(t.Context(), "traffic", "get", "hotel/search"); err != nil || !strings.Contains(out, "alice") {
		t.Fatalf("traffic get: %v: %q, want the policy set by alice", err, out)
	}
	// berth watch sends the token too: it prints the view until its context ends.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if out, err := run(ctx, "watch", "hotel/search", "--json"); err != nil || !strings.Contains(out, "hotel/search") {
		t.Fatalf("watch with alice's token: %v: %q, want the view", err, out)
	}
	if out, err := run(t.Context(), "traffic", "clear", "hotel/search"); err != nil {
		t.Fatalf("traffic clear with alice's token: %v: %s", err, out)
	}
}
