package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// runBerth runs the berth command tree in process with args and returns its output.
func runBerth(ctx context.Context, t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := NewRoot()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errOut)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// eventsFixture is a NATS server with BERTH_EVENTS and a Bus that publishes to it.
type eventsFixture struct {
	srv *natstest.Server
	bus *natsbus.Bus
}

func newEventsFixture(t *testing.T, ensure bool) *eventsFixture {
	t.Helper()
	srv := natstest.RunServer(t)
	bus, err := natsbus.Connect(t.Context(), natsbus.Config{URLs: []string{srv.URL()}, Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = bus.Close(ctx)
	})
	if ensure {
		if err := bus.EnsureStreams(t.Context(), natsbus.StreamConfig{}); err != nil {
			t.Fatal(err)
		}
	}
	return &eventsFixture{srv: srv, bus: bus}
}

// publish publishes an event of domain.typ about id (a service path for deploy, instance
// and image events, a host or task id otherwise) and returns it.
func (f *eventsFixture) publish(t *testing.T, domain, typ, id, key string) natsbus.Event {
	t.Helper()
	at := time.Now().UTC()
	ev := natsbus.Event{
		ID:     natsbus.EventID(domain, typ, id, key),
		Type:   subjects.EventType(domain, typ),
		Source: "berth-test/1",
		Time:   at,
	}
	var err error
	switch domain {
	case subjects.DomainDeploy:
		ev.Subject, err = subjects.DeployEvent(typ, id)
		ev.ServicePath = id
		ev.Data = &eventsv1.DeployEvent{DeploymentId: "dep-" + key, Service: id, Version: "1.4.2", State: typ,
			PreviousState: "running", Batch: -1, Message: "<done> & dusted", At: timestamppb.New(at),
			Counts: &eventsv1.TargetCounts{Total: 2, Succeeded: 2}}
	case subjects.DomainInstance:
		ev.Subject, err = subjects.InstanceEvent(typ, id)
		ev.ServicePath = id
		ev.Data = &eventsv1.InstanceEvent{Service: id, InstanceId: "i-" + key, Host: "h-1", Ip: "10.0.0.7", Port: 8080, State: typ, At: timestamppb.New(at)}
	case subjects.DomainHost:
		ev.Subject, err = subjects.HostEvent(typ, id)
		ev.Data = &eventsv1.HostEvent{Host: id, Dc: "bj", State: typ, Details: map[string]string{"cpu": "32"}, At: timestamppb.New(at)}
	default:
		t.Fatalf("domain %s not in the fixture", domain)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := f.bus.PublishEvent(t.Context(), ev); err != nil {
		t.Fatalf("publish %s: %v", ev.Subject, err)
	}
	return ev
}

// wantJSON is the CloudEvents JSON object berth events --json must print for ev.
func wantJSON(t *testing.T, ev natsbus.Event) map[string]any {
	t.Helper()
	data, err := protojson.Marshal(ev.Data)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{
		"specversion":     "1.0",
		"id":              ev.ID,
		"source":          ev.Source,
		"type":            ev.Type,
		"time":            ev.Time.UTC().Format(time.RFC3339Nano),
		"datacontenttype": "application/json",
		"data":            json.RawMessage(data),
	}
	if ev.ServicePath != "" {
		m["subject"] = ev.ServicePath
	}
	// A round trip through JSON gives the same types json.Unmarshal gives the output.
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// parseLines parses one JSON object per line.
func parseLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var got []map[string]any
	for line := range strings.Lines(out) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q is not one JSON object: %v", line, err)
		}
		got = append(got, m)
	}
	return got
}

func TestEventsJSONPrintsExactlyThePublishedEvents(t *testing.T) {
	f := newEventsFixture(t, true)
	want := []natsbus.Event{
		f.publish(t, "deploy", "requested", "hotel/search", "1"),
		f.publish(t, "instance", "registered", "hotel/search", "1"),
		f.publish(t, "host", "down", "h-017", "1"),
		f.publish(t, "deploy", "completed", "hotel/search", "1"),
	}
	// A retried publish of the same event is stored once and printed once.
	if err := f.bus.PublishEvent(t.Context(), want[3]); err != nil {
		t.Fatal(err)
	}
	out, err := runBerth(t.Context(), t, "events", "--json", "--nats", f.srv.URL())
	if err != nil {
		t.Fatalf("berth events: %v", err)
	}
	got := parseLines(t, out)
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(got), len(want), out)
	}
	for i, ev := range want {
		if w := wantJSON(t, ev); !reflect.DeepEqual(got[i], w) {
			t.Errorf("line %d: got %v, want %v", i, got[i], w)
		}
		// The data decodes back into the message that was published.
		raw, _ := json.Marshal(got[i]["data"])
		m := ev.Data.ProtoReflect().New().Interface()
		if err := protojson.Unmarshal(raw, m); err != nil || !proto.Equal(m, ev.Data) {
			t.Errorf("line %d data: got %v (err %v), want %v", i, m, err, ev.Data)
		}
	}
	if strings.Contains(out, `\u003c`) {
		t.Errorf("output escapes HTML (\\u003c), want it verbatim: %s", out)
	}
}

func TestEventsFilters(t *testing.T) {
	f := newEventsFixture(t, true)
	evs := map[string]natsbus.Event{
		"hotel req":        f.publish(t, "deploy", "requested", "hotel", "1"),
		"search req":       f.publish(t, "deploy", "requested", "hotel/search", "1"),
		"search done":      f.publish(t, "deploy", "completed", "hotel/search", "1"),
		"search2 done":     f.publish(t, "deploy", "completed", "hotel/search2", "1"),
		"search api done":  f.publish(t, "deploy", "completed", "hotel/search/api", "1"),
		"flight done":      f.publish(t, "deploy", "completed", "flight/search", "1"),
		"search inst":      f.publish(t, "instance", "registered", "hotel/search", "1"),
		"search inst done": f.publish(t, "instance", "completed", "hotel/search", "1"),
		"host down":        f.publish(t, "host", "down", "h-017", "1"),
	}
	tests := []struct {
		args []string
		want []string // keys of evs, in publish order
	}{
		{nil, []string{"hotel req", "search req", "search done", "search2 done", "search api done", "flight done", "search inst", "search inst done", "host down"}},
		{[]string{"--service", "hotel/search"}, []string{"search req", "search done", "search api done", "search inst", "search inst done"}},
		{[]string{"--service", "/hotel/"}, []string{"hotel req", "search req", "search done", "search2 done", "search api done", "search inst", "search inst done"}},
		{[]string{"--type", "completed"}, []string{"search done", "search2 done", "search api done", "flight done", "search inst done"}},
		{[]string{"--type", "deploy.completed"}, []string{"search done", "search2 done", "search api done", "flight done"}},
		{[]string{"--type", "dev.berth.deploy.completed"}, []string{"search done", "search2 done", "search api done", "flight done"}},
		{[]string{"--type", "deploy"}, []string{"hotel req", "search req", "search done", "search2 done", "search api done", "flight done"}},
		{[]string{"--type", "instance", "--service", "hotel/search"}, []string{"search inst", "search inst done"}},
		{[]string{"--type", "completed", "--service", "hotel/search"}, []string{"search done", "search api done", "search inst done"}},
		{[]string{"--service", "h-017"}, []string{"host down"}},
		{[]string{"--service", "nothing/here"}, nil},
	}
	order := []string{"hotel req", "search req", "search done", "search2 done", "search api done", "flight done", "search inst", "search inst done", "host down"}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			args := append([]string{"events", "--json", "--nats", f.srv.URL()}, tt.args...)
			out, err := runBerth(t.Context(), t, args...)
			if err != nil {
				t.Fatalf("berth %v: %v", args, err)
			}
			var got []string
			for _, m := range parseLines(t, out) {
				i := slices.IndexFunc(order, func(k string) bool { return evs[k].ID == m["id"] })
				if i < 0 {
					t.Fatalf("printed an event that was not published: %v", m)
				}
				got = append(got, order[i])
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("berth %v: got %q, want %q", args, got, tt.want)
			}
		})
	}
}

func TestEventsSince(t *testing.T) {
	f := newEventsFixture(t, true)
	f.publish(t, "deploy", "requested", "hotel/search", "old")
	time.Sleep(20 * time.Millisecond)
	cut := time.Now()
	time.Sleep(20 * time.Millisecond)
	recent := f.publish(t, "deploy", "completed", "hotel/search", "new")
	tests := []struct {
		since string
		want  int
	}{
		{cut.UTC().Format(time.RFC3339Nano), 1},
		{"1h", 2},
	}
	for _, tt := range tests {
		out, err := runBerth(t.Context(), t, "events", "--json", "--nats", f.srv.URL(), "--since", tt.since)
		if err != nil {
			t.Fatalf("--since %s: %v", tt.since, err)
		}
		got := parseLines(t, out)
		if len(got) != tt.want {
			t.Fatalf("--since %s: got %d events, want %d", tt.since, len(got), tt.want)
		}
		if got[len(got)-1]["id"] != recent.ID {
			t.Errorf("--since %s: got last id %v, want %s", tt.since, got[len(got)-1]["id"], recent.ID)
		}
	}
	// A since after every event prints nothing and still exits.
	out, err := runBerth(t.Context(), t, "events", "--nats", f.srv.URL(), "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	if err != nil || out != "" {
		t.Errorf("--since in the future: got %q, %v; want no output and no error", out, err)
	}
}

func TestEventsFollow(t *testing.T) {
	f := newEventsFixture(t, true)
	first := f.publish(t, "deploy", "requested", "hotel/search", "1")
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		root := NewRoot()
		root.SetArgs([]string{"events", "--follow", "--json", "--nats", f.srv.URL(), "--service", "hotel"})
		root.SetOut(out)
		root.SetErr(&bytes.Buffer{})
		done <- root.ExecuteContext(ctx)
	}()
	waitLines := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for strings.Count(out.String(), "\n") < n {
			if time.Now().After(deadline) {
				t.Fatalf("got output %q, want %d lines within 5s", out.String(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitLines(1)
	second := f.publish(t, "deploy", "completed", "hotel/search", "1")
	f.publish(t, "deploy", "completed", "flight/search", "1") // Filtered out.
	waitLines(2)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("berth events --follow after cancel: got %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("berth events --follow did not return within 5s of cancel")
	}
	got := parseLines(t, out.String())
	if len(got) != 2 || got[0]["id"] != first.ID || got[1]["id"] != second.ID {
		t.Errorf("got %v, want the ids %s and %s", got, first.ID, second.ID)
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader at a time.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestEventsText(t *testing.T) {
	f := newEventsFixture(t, true)
	ev := f.publish(t, "deploy", "completed", "hotel/search", "7")
	f.publish(t, "host", "down", "h-017", "7")
	out, err := runBerth(t.Context(), t, "events", "--nats", f.srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), out)
	}
	wantParts := [][]string{
		{ev.Time.UTC().Format("2006-01-02T15:04:05.000Z"), "deploy.completed", "hotel/search", "deployment=dep-7", "version=1.4.2", "state=running→completed", `"<done> & dusted"`},
		{"host.down", "h-017", "state=down"},
	}
	for i, parts := range wantParts {
		for _, p := range parts {
			if !strings.Contains(lines[i], p) {
				t.Errorf("line %d %q: missing %q", i, lines[i], p)
			}
		}
	}
}

func TestEventsMissingStream(t *testing.T) {
	f := newEventsFixture(t, false)
	_, err := runBerth(t.Context(), t, "events", "--nats", f.srv.URL())
	if err == nil {
		t.Fatal("got nil error, want one saying BERTH_EVENTS is missing")
	}
	for _, want := range []string{"BERTH_EVENTS is missing", f.srv.URL(), "berth dev"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("got %q, want it to contain %q", err, want)
		}
	}
}

func TestEventsWithoutJetStream(t *testing.T) {
	srv := natstest.RunServer(t, natstest.WithoutJetStream())
	_, err := runBerth(t.Context(), t, "events", "--nats", srv.URL())
	if err == nil || !strings.Contains(err.Error(), "JetStream is not enabled on "+srv.URL()) {
		t.Fatalf("got %v, want an error saying JetStream is not enabled on %s", err, srv.URL())
	}
}

func TestEventsUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + l.Addr().String()
	l.Close()
	t.Setenv(envNATSURL, url) // The environment gives the URL when --nats is not set.
	start := time.Now()
	_, err = runBerth(t.Context(), t, "events")
	if err == nil {
		t.Fatalf("got nil error, want one naming %s", url)
	}
	if msg := err.Error(); !strings.Contains(msg, url) || strings.Contains(msg, "\n") {
		t.Errorf("got %q, want one line naming %s", msg, url)
	}
	if el := time.Since(start); el > 6*time.Second {
		t.Errorf("failed after %s, want within the connect timeout", el)
	}
}

func TestEventFilters(t *testing.T) {
	tests := []struct {
		service, typ string
		want         []string
		wantErr      string
	}{
		{"", "", []string{"berth.v1.events.>"}, ""},
		{"", "completed", []string{"berth.v1.events.*.completed.>"}, ""},
		{"", "deploy", []string{"berth.v1.events.deploy.*.>"}, ""},
		{"", "deploy.completed", []string{"berth.v1.events.deploy.completed.>"}, ""},
		{"", "dev.berth.image.built", []string{"berth.v1.events.image.built.>"}, ""},
		{"", "*.completed", []string{"berth.v1.events.*.completed.>"}, ""},
		{"hotel/search", "", []string{"berth.v1.events.*.*.hotel.search", "berth.v1.events.*.*.hotel.search.>"}, ""},
		{"hotel/search", "deploy.failed", []string{"berth.v1.events.deploy.failed.hotel.search", "berth.v1.events.deploy.failed.hotel.search.>"}, ""},
		{"hotel/se arch", "", nil, `--service "hotel/se arch"`},
		{"hotel//search", "", nil, `--service "hotel//search"`},
		{"", "a.b.c", nil, `--type "a.b.c"`},
		{"", "ship.completed", nil, `unknown domain "ship"`},
		{"", "deploy.comp>", nil, `--type "deploy.comp>"`},
	}
	for _, tt := range tests {
		got, err := eventFilters(tt.service, tt.typ)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("eventFilters(%q, %q): got %v, %v; want an error containing %q", tt.service, tt.typ, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("eventFilters(%q, %q): got %q, %v; want %q", tt.service, tt.typ, got, err, tt.want)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"", time.Time{}, false},
		{"90m", now.Add(-90 * time.Minute), false},
		{"2026-01-02T03:04:05Z", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), false},
		{"-1h", time.Time{}, true},
		{"0s", time.Time{}, true},
		{"yesterday", time.Time{}, true},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in, now)
		if (err != nil) != tt.wantErr || !got.Equal(tt.want) {
			t.Errorf("parseSince(%q): got %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
