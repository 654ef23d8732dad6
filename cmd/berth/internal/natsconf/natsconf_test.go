package natsconf

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/pkg/natsbus"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// secured is a real nats-server started from the configuration Write generated.
type secured struct {
	dir  string
	url  string // tls://127.0.0.1:port
	port int
}

func startSecured(t *testing.T, hosts ...string) *secured {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if _, err := certs.Init(certs.Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(Options{Dir: dir, Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), AgentHosts: hosts}); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(filepath.Join(dir, ConfFile))
	if err != nil {
		t.Fatalf("nats-server rejects the generated configuration: %v", err)
	}
	opts.NoLog, opts.NoSigs = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	port := srv.Addr().(*net.TCPAddr).Port
	return &secured{dir: dir, port: port, url: "tls://127.0.0.1:" + strconv.Itoa(port)}
}

// auth reads the environment file Write made for user, as a service would get it.
func (s *secured) auth(t *testing.T, user string) natsbus.Auth {
	t.Helper()
	f, err := os.Open(filepath.Join(s.dir, "nats", user+".env"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && !strings.HasPrefix(k, "#") {
			env[k] = v
		}
	}
	a := natsbus.Auth{CertFile: env["BERTH_NATS_CERT_FILE"], KeyFile: env["BERTH_NATS_KEY_FILE"], TrustedCAFile: env["BERTH_NATS_TRUSTED_CA_FILE"],
		NKeySeedFile: env["BERTH_NATS_NKEY_SEED_FILE"], InboxPrefix: env["BERTH_NATS_INBOX_PREFIX"]}
	if err := a.Validate("nats_auth"); err != nil {
		t.Fatalf("%s.env: %v", user, err)
	}
	return a
}

// bus connects as user through natsbus, the way the services do.
func (s *secured) bus(t *testing.T, user string) *natsbus.Bus {
	t.Helper()
	cfg := natsbus.Config{URLs: []string{s.url}, Name: user, ConnectTimeout: 5 * time.Second, MaxReconnects: 1}
	if err := s.auth(t, user).Apply(&cfg); err != nil {
		t.Fatal(err)
	}
	b, err := natsbus.Connect(t.Context(), cfg)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

// raw connects as user with a plain nats.go connection whose asynchronous errors (the
// server's permission violations) are collected.
type rawConn struct {
	nc *nats.Conn
	mu sync.Mutex
	// errs are the asynchronous errors so far.
	errs []error
}

func (s *secured) raw(t *testing.T, user string) *rawConn {
	t.Helper()
	a := s.auth(t, user)
	cfg := natsbus.Config{}
	if err := a.Apply(&cfg); err != nil {
		t.Fatal(err)
	}
	rc := &rawConn{}
	seed, err := nats.NkeyOptionFromSeed(a.NKeySeedFile)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.url, nats.Secure(cfg.TLS), seed, nats.CustomInboxPrefix(a.InboxPrefix),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			rc.mu.Lock()
			rc.errs = append(rc.errs, err)
			rc.mu.Unlock()
		}))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	rc.nc = nc
	return rc
}

// violation waits for the server's permission violation naming subject.
func (rc *rawConn) violation(t *testing.T, what, subject string) {
	t.Helper()
	want := "permissions violation for " + what + ` to "` + subject + `"`
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		_ = rc.nc.Flush()
		rc.mu.Lock()
		for _, err := range rc.errs {
			if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
				rc.mu.Unlock()
				return
			}
		}
		rc.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	t.Fatalf("got errors %v; want the server to refuse: %s", rc.errs, want)
}

// clean checks that the connection saw no permission violation.
func (rc *rawConn) clean(t *testing.T) {
	t.Helper()
	_ = rc.nc.Flush()
	time.Sleep(50 * time.Millisecond)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.errs) > 0 {
		t.Fatalf("got errors %v; want none", rc.errs)
	}
}

func TestTLSAndLoginRequired(t *testing.T) {
	s := startSecured(t, "h1")
	a := s.auth(t, "controller")
	tlsCfg, err := certs.Files{CertFile: a.CertFile, KeyFile: a.KeyFile, TrustedCAFile: a.TrustedCAFile}.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	noCert, err := certs.Files{TrustedCAFile: a.TrustedCAFile}.ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	seed, err := nats.NkeyOptionFromSeed(a.NKeySeedFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("plaintext", func(t *testing.T) {
		// nats.go upgrades to TLS by itself when the server asks, so speak the protocol
		// by hand: the server must refuse a client that carries on in plaintext.
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.port), 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		info, err := r.ReadString('\n')
		if err != nil || !strings.Contains(info, `"tls_required":true`) {
			t.Fatalf("INFO: got %q, %v; want tls_required", info, err)
		}
		if _, err := c.Write([]byte("CONNECT {\"verbose\":false}\r\nPING\r\n")); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if strings.HasPrefix(line, "PONG") {
			t.Fatalf("plaintext client: got %q, want the connection refused", line)
		}
		if err == nil && !strings.Contains(line, "TLS Required") {
			t.Fatalf("plaintext client: got %q, want -ERR ... TLS Required or a closed connection", line)
		}
	})
	tests := []struct {
		name string
		url  string
		opts []nats.Option
		want string
	}{
		{"TLS without a client certificate", s.url, []nats.Option{nats.Secure(noCert), seed}, "tls"},
		{"TLS without a login", s.url, []nats.Option{nats.Secure(tlsCfg)}, "authorization violation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := nats.Connect(tt.url, append(tt.opts, nats.Timeout(3*time.Second), nats.NoReconnect())...)
			if err == nil {
				nc.Close()
				t.Fatalf("connect: got a connection, want it refused (%s)", tt.want)
			}
			if !strings.Contains(strings.ToLower(err.Error()), tt.want) {
				t.Fatalf("connect: got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	t.Run("TLS, certificate and nkey", func(t *testing.T) {
		nc, err := nats.Connect(s.url, nats.Secure(tlsCfg), seed, nats.Timeout(3*time.Second), nats.NoReconnect())
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		nc.Close()
	})
}

// TestServicesUseTheirSubjects runs each service's traffic through the permissions:
// streams, events, steps, placements, builds, views, the event log.
func TestServicesUseTheirSubjects(t *testing.T) {
	s := startSecured(t, "h1", "h2")
	ctx := t.Context()
	ctrl := s.bus(t, "controller")
	if err := ctrl.EnsureStreams(ctx, natsbus.StreamConfig{}); err != nil {
		t.Fatalf("controller ensures the streams: %v", err)
	}

	// A step to h1 reaches h1's agent, which answers, reports progress and a result.
	agent := s.bus(t, "agent-h1")
	step, _ := subjects.AgentStep("h1")
	if _, err := natsbus.HandleTyped(ctx, agent, step, "agents", func(ctx context.Context, req *agentv1.StepRequest) (proto.Message, error) {
		prog, _ := subjects.AgentProgressFor(req.GetTaskId())
		res, _ := subjects.AgentResultFor(req.GetTaskId())
		if err := agent.Publish(ctx, prog, &agentv1.StepProgress{TaskId: req.GetTaskId()}); err != nil {
			return nil, err
		}
		if err := agent.Publish(ctx, res, &agentv1.StepResult{TaskId: req.GetTaskId()}); err != nil {
			return nil, err
		}
		return &agentv1.StepReply{}, nil
	}); err != nil {
		t.Fatalf("agent-h1 serves its steps: %v", err)
	}
	results := make(chan *agentv1.StepResult, 1)
	if _, err := natsbus.SubscribeTyped(ctx, ctrl, subjects.AgentResults, "", func(_ context.Context, r *agentv1.StepResult) error {
		results <- r
		return nil
	}); err != nil {
		t.Fatalf("controller hears results: %v", err)
	}
	if _, err := natsbus.SubscribeTyped(ctx, ctrl, subjects.AgentProgress, "", func(context.Context, *agentv1.StepProgress) error { return nil }); err != nil {
		t.Fatalf("controller hears progress: %v", err)
	}
	if err := ctrl.Request(ctx, step, &agentv1.StepRequest{TaskId: "t1", Host: "h1"}, &agentv1.StepReply{}); err != nil {
		t.Fatalf("controller sends h1 a step: %v", err)
	}
	select {
	case r := <-results:
		if r.GetTaskId() != "t1" {
			t.Fatalf("result: got task %q, want t1", r.GetTaskId())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("controller got no result from agent-h1")
	}

	// Events: each service publishes its own domain into BERTH_EVENTS.
	pub := func(b *natsbus.Bus, subject, domain string) {
		t.Helper()
		if err := b.PublishEvent(ctx, natsbus.Event{Subject: subject, ID: subject, Type: subjects.EventType(domain, "x"), Source: "test",
			Data: &eventsv1.HostEvent{Host: "h1"}}); err != nil {
			t.Fatalf("publish %s: %v", subject, err)
		}
	}
	dep, _ := subjects.DeployEvent("requested", "hotel/search")
	audit, _ := subjects.AuditEvent("denied", "flight")
	pub(ctrl, dep, subjects.DomainDeploy)
	pub(ctrl, audit, subjects.DomainAudit)
	host, _ := subjects.HostEvent("up", "h1")
	pub(s.bus(t, "cmdb-sync"), host, subjects.DomainHost)
	inst, _ := subjects.InstanceEvent("registered", "hotel/search")
	pub(agent, inst, subjects.DomainInstance)
	tmpl, _ := subjects.TemplateEvent("reloaded", "h1")
	pub(agent, tmpl, subjects.DomainTemplate)

	// The scheduler and the builder answer requests and create their work consumers.
	for _, sv := range []struct {
		user     string
		subjects []string
		work     string
	}{{"scheduler", []string{subjects.RPCPlace, subjects.RPCRelease}, subjects.WorkPlace}, {"image-builder", []string{subjects.RPCBuild}, subjects.WorkBuild}} {
		b := s.bus(t, sv.user)
		for _, subj := range sv.subjects {
			if _, err := natsbus.HandleTyped(ctx, b, subj, sv.user, func(context.Context, *agentv1.StepRequest) (proto.Message, error) {
				return &agentv1.StepReply{}, nil
			}); err != nil {
				t.Fatalf("%s serves %s: %v", sv.user, subj, err)
			}
			if err := ctrl.Request(ctx, subj, &agentv1.StepRequest{TaskId: "x"}, &agentv1.StepReply{}); err != nil {
				t.Fatalf("controller asks %s on %s: %v", sv.user, subj, err)
			}
		}
		cons, err := b.JetStream().CreateOrUpdateConsumer(ctx, subjects.StreamWork, jetstream.ConsumerConfig{Durable: sv.user, AckPolicy: jetstream.AckExplicitPolicy,
			FilterSubject: sv.work})
		if err != nil {
			t.Fatalf("%s creates its work consumer: %v", sv.user, err)
		}
		if _, err := cons.Fetch(1, jetstream.FetchMaxWait(200*time.Millisecond)); err != nil {
			t.Fatalf("%s pulls work: %v", sv.user, err)
		}
	}

	// The name service publishes a view into the bucket; agents read it.
	ns := s.bus(t, "name-service")
	kv, err := ns.JetStream().CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: subjects.NamesBucket, History: 1})
	if err != nil {
		t.Fatalf("name service creates the bucket: %v", err)
	}
	if _, err := kv.Put(ctx, "hotel.search", []byte("view")); err != nil {
		t.Fatalf("name service stores a view: %v", err)
	}
	view, _ := subjects.NamesView("hotel/search")
	if err := ns.Publish(ctx, view, &agentv1.StepReply{}); err != nil {
		t.Fatalf("name service publishes a view: %v", err)
	}
	akv, err := agent.JetStream().KeyValue(ctx, subjects.NamesBucket)
	if err != nil {
		t.Fatalf("agent opens the bucket: %v", err)
	}
	if e, err := akv.Get(ctx, "hotel.search"); err != nil || string(e.Value()) != "view" {
		t.Fatalf("agent reads a view: got %v, want \"view\"", err)
	}

	// The CLI reads the event log.
	cli := s.bus(t, "berth")
	got := make(chan string, 16)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- cli.ConsumeEvents(cctx, natsbus.EventConsumerConfig{}, func(_ context.Context, d natsbus.EventDelivery) error {
			got <- d.Subject
			return nil
		})
	}()
	select {
	case subj := <-got:
		if subj != dep {
			t.Errorf("first event: got %s, want %s", subj, dep)
		}
	case <-time.After(5 * time.Second):
		t.Error("the CLI read no event")
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("ConsumeEvents: %v", err)
	}

	// The controller follows the scheduler's alloc.rescheduled events from the event log.
	resched, err := subjects.AllocEvent("rescheduled", "hotel/search")
	if err != nil {
		t.Fatal(err)
	}
	sched := s.bus(t, "scheduler")
	if err := sched.PublishEvent(ctx, natsbus.Event{Subject: resched, Type: subjects.EventType(subjects.DomainAlloc, "rescheduled"), ID: "resched-1", Source: "test",
		Data: &eventsv1.HostEvent{Host: "h1"}}); err != nil {
		t.Fatalf("scheduler publishes alloc.rescheduled: %v", err)
	}
	follow := make(chan string, 4)
	fctx, fcancel := context.WithCancel(ctx)
	fdone := make(chan error, 1)
	go func() {
		fdone <- ctrl.ConsumeEvents(fctx, natsbus.EventConsumerConfig{FilterSubjects: []string{"berth.v1.events.alloc.rescheduled.>"}},
			func(_ context.Context, d natsbus.EventDelivery) error {
				follow <- d.Subject
				return nil
			})
	}()
	select {
	case subj := <-follow:
		if subj != resched {
			t.Errorf("controller's first alloc.rescheduled: got %s, want %s", subj, resched)
		}
	case <-time.After(5 * time.Second):
		t.Error("the controller read no alloc.rescheduled event")
	}
	fcancel()
	if err := <-fdone; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("controller ConsumeEvents: %v", err)
	}

	// None of this was a violation.
	for _, u := range []string{"controller", "agent-h1"} {
		rc := s.raw(t, u)
		rc.clean(t)
	}
}

// TestOutsidePermissionsRefused checks what each user may not do.
func TestOutsidePermissionsRefused(t *testing.T) {
	s := startSecured(t, "h1", "h2")
	stepH2, _ := subjects.AgentStep("h2")
	dep, _ := subjects.DeployEvent("completed", "hotel/search")
	audit, _ := subjects.AuditEvent("allowed", "hotel")
	tmplH2, _ := subjects.TemplateEvent("reloaded", "h2")
	hostEv, _ := subjects.HostEvent("down", "h2")
	tests := []struct {
		user, what, subject string
	}{
		{"agent-h1", "publish", stepH2},
		{"agent-h1", "publish", dep},
		{"agent-h1", "publish", audit},
		{"agent-h1", "publish", tmplH2},
		{"agent-h1", "publish", hostEv},
		{"agent-h1", "publish", subjects.RPCBuild},
		{"agent-h1", "publish", "$JS.API.STREAM.DELETE.BERTH_EVENTS"},
		{"agent-h1", "subscription", stepH2},
		{"agent-h1", "subscription", subjects.AgentSteps},
		{"agent-h1", "subscription", "_INBOX_controller.>"},
		{"agent-h1", "subscription", "_INBOX.>"},
		{"cmdb-sync", "publish", dep},
		{"cmdb-sync", "publish", stepH2},
		{"name-service", "publish", stepH2},
		{"scheduler", "publish", "$JS.API.STREAM.PURGE.BERTH_WORK"},
		{"image-builder", "subscription", subjects.AgentResults},
		{"controller", "subscription", stepH2},
		{"controller", "publish", "$KV.berth-names.hotel"},
	}
	for _, tt := range tests {
		t.Run(tt.user+" "+tt.what+" "+tt.subject, func(t *testing.T) {
			rc := s.raw(t, tt.user)
			if tt.what == "publish" {
				if err := rc.nc.Publish(tt.subject, []byte("x")); err != nil {
					t.Fatal(err)
				}
			} else if _, err := rc.nc.SubscribeSync(tt.subject); err != nil {
				t.Fatal(err)
			}
			rc.violation(t, tt.what, tt.subject)
		})
	}
	// The refusal is the server's: an agent of h2 listening on its own subject gets
	// nothing h1's agent sent there.
	h2 := s.raw(t, "agent-h2")
	sub, err := h2.nc.SubscribeSync(stepH2)
	if err != nil {
		t.Fatal(err)
	}
	h2.clean(t)
	h1 := s.raw(t, "agent-h1")
	_ = h1.nc.Publish(stepH2, []byte("forged"))
	_ = h1.nc.Flush()
	if m, err := sub.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("agent-h2 received %q from agent-h1 on %s; want nothing", m.Data, stepH2)
	}
}

func TestWriteKeepsSeedsAndChecksInput(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if _, err := Write(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "berth certs init") {
		t.Fatalf("Write without certificates: got %v, want an error saying to run berth certs init", err)
	}
	if _, err := certs.Init(certs.Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	first, err := Write(Options{Dir: dir, AgentHosts: []string{"h1"}})
	if err != nil {
		t.Fatal(err)
	}
	second, err := Write(Options{Dir: dir, AgentHosts: []string{"h1", "h2"}})
	if err != nil {
		t.Fatal(err)
	}
	keys := func(ws []Written) map[string]string {
		m := map[string]string{}
		for _, w := range ws {
			if w.PublicKey != "" {
				m[w.User] = w.PublicKey
			}
		}
		return m
	}
	k1, k2 := keys(first), keys(second)
	if k1["agent-h1"] == "" || k1["agent-h1"] != k2["agent-h1"] || k1["controller"] != k2["controller"] {
		t.Fatalf("second Write changed existing keys: %v then %v", k1, k2)
	}
	if k2["agent-h2"] == "" {
		t.Fatal("second Write: no key for the new agent host h2")
	}
	third, err := Write(Options{Dir: dir, AgentHosts: []string{"h1"}, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if keys(third)["controller"] == k1["controller"] {
		t.Fatal("Write with Force kept the controller's key; want a new one")
	}
	st, err := os.Stat(filepath.Join(dir, "nats", "controller.nk"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("controller.nk: got %v, %v; want mode 0600", st, err)
	}
	for _, bad := range []Options{
		{Dir: dir, AgentHosts: []string{"h.1"}},
		{Dir: dir, AgentHosts: []string{"progress"}},
		{Dir: dir, AgentHosts: []string{"h1", "h1"}},
		{Dir: dir, Path: `/etc/"x`},
	} {
		if _, err := Write(bad); err == nil {
			t.Errorf("Write(%+v): got nil error", bad)
		}
	}
}
