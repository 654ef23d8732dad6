package natsbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
	"github.com/berthdev/berth/proto/subjects"
)

// deployEvent is a deploy event of type typ for service whose id derives from key.
func deployEvent(t *testing.T, key, typ, service string) natsbus.Event {
	t.Helper()
	subj, err := subjects.DeployEvent(typ, service)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 4, 5, 6, 7, 891011000, time.UTC)
	return natsbus.Event{
		Subject:     subj,
		ID:          natsbus.EventID("dep-"+key, typ),
		Type:        subjects.EventType(subjects.DomainDeploy, typ),
		Source:      "berth-controller/r1",
		ServicePath: service,
		Time:        at,
		Data: &eventsv1.DeployEvent{
			DeploymentId: "dep-" + key,
			Service:      service,
			Version:      "1.4.2",
			Mode:         "package",
			State:        typ,
			Batch:        -1,
			Message:      "deploy " + key + " " + typ,
			Counts:       &eventsv1.TargetCounts{Total: 3, Succeeded: 2, Failed: 1},
			Target:       &eventsv1.TargetChange{Host: "h-017", Output: []string{"line 1", "ünïcode"}},
			At:           timestamppb.New(at),
		},
	}
}

// publishDeploy publishes deployEvent(key, typ, service) and returns it.
func publishDeploy(t *testing.T, b *natsbus.Bus, key, typ, service string) natsbus.Event {
	t.Helper()
	ev := deployEvent(t, key, typ, service)
	if err := b.PublishEvent(t.Context(), ev); err != nil {
		t.Fatalf("publish %s: %v", ev.Subject, err)
	}
	return ev
}

func TestPublishEventDedupes(t *testing.T) {
	s := natstest.RunServer(t)
	b := withStreams(t, s)
	ev := deployEvent(t, "1", "completed", "hotel/search")
	for i := range 3 {
		if err := b.PublishEvent(t.Context(), ev); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if got := streamMsgs(t, b, subjects.StreamEvents); got != 1 {
		t.Fatalf("after publishing one id 3 times: got %d events, want 1", got)
	}
	ev.ID = natsbus.EventID("dep-1", "completed", "again")
	if err := b.PublishEvent(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	if got := streamMsgs(t, b, subjects.StreamEvents); got != 2 {
		t.Fatalf("after a second id: got %d events, want 2", got)
	}
}

func TestEventRoundTrip(t *testing.T) {
	s := natstest.RunServer(t)
	b := withStreams(t, s)
	ev := publishDeploy(t, b, "rt", "completed", "hotel/search")

	st, err := b.JetStream().Stream(t.Context(), subjects.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.GetMsg(t.Context(), 1)
	if err != nil {
		t.Fatalf("get event 1: %v", err)
	}
	wantHeaders := map[string]string{
		"ce-specversion": "1.0",
		"ce-id":          ev.ID,
		"ce-source":      "berth-controller/r1",
		"ce-type":        "dev.berth.deploy.completed",
		"ce-subject":     "hotel/search",
		"ce-time":        "2026-03-04T05:06:07.891011Z",
		"content-type":   "application/json",
		"Nats-Msg-Id":    ev.ID,
	}
	for k, want := range wantHeaders {
		if got := raw.Header.Get(k); got != want {
			t.Errorf("header %s: got %q, want %q", k, got, want)
		}
	}
	if raw.Subject != "berth.v1.events.deploy.completed.hotel.search" {
		t.Errorf("subject: got %q, want berth.v1.events.deploy.completed.hotel.search", raw.Subject)
	}
	var asMap map[string]any
	if err := json.Unmarshal(raw.Data, &asMap); err != nil {
		t.Fatalf("data is not JSON: %v: %s", err, raw.Data)
	}
	if asMap["deploymentId"] != "dep-rt" {
		t.Errorf("data deploymentId: got %v, want dep-rt (protojson names)", asMap["deploymentId"])
	}

	ce, err := natsbus.DecodeEvent(&nats.Msg{Subject: raw.Subject, Header: raw.Header, Data: raw.Data})
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	want := natsbus.CloudEvent{SpecVersion: "1.0", ID: ev.ID, Source: ev.Source, Type: ev.Type, Subject: ev.ServicePath, Time: ev.Time, DataContentType: "application/json"}
	got := ce
	got.Data = nil
	if !got.Time.Equal(want.Time) {
		t.Errorf("time: got %s, want %s", got.Time, want.Time)
	}
	got.Time = want.Time
	if !reflect.DeepEqual(got, want) {
		t.Errorf("attributes: got %+v, want %+v", got, want)
	}
	var data eventsv1.DeployEvent
	if err := natsbus.UnmarshalEventData(ce, &data); err != nil {
		t.Fatalf("unmarshal data: %v", err)
	}
	if !proto.Equal(&data, ev.Data) {
		t.Errorf("data: got %v, want %v", &data, ev.Data)
	}
}

func TestUnmarshalEventDataIgnoresNewFields(t *testing.T) {
	ce := natsbus.CloudEvent{ID: "x", Data: json.RawMessage(`{"deploymentId":"d1","fieldFromTheFuture":3}`)}
	var got eventsv1.DeployEvent
	if err := natsbus.UnmarshalEventData(ce, &got); err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	if got.GetDeploymentId() != "d1" {
		t.Errorf("deploymentId: got %q, want d1", got.GetDeploymentId())
	}
	if err := natsbus.UnmarshalEventData(natsbus.CloudEvent{ID: "x"}, &got); err == nil {
		t.Errorf("empty data: got nil error, want one")
	}
}

func TestDecodeEventRejects(t *testing.T) {
	good := func() nats.Header {
		return nats.Header{
			"ce-specversion": {"1.0"}, "ce-id": {"i1"}, "ce-source": {"s"}, "ce-type": {"dev.berth.deploy.completed"},
			"ce-time": {"2026-01-02T03:04:05Z"}, "content-type": {"application/json"},
		}
	}
	tests := []struct {
		name   string
		change func(nats.Header)
		data   string
		want   string // error substring; empty means valid
	}{
		{"valid", func(nats.Header) {}, `{"a":1}`, ""},
		{"valid without optional", func(h nats.Header) { h.Del("ce-time"); h.Del("content-type") }, `{}`, ""},
		{"missing id", func(h nats.Header) { h.Del("ce-id") }, `{}`, "missing ce-id"},
		{"missing specversion", func(h nats.Header) { h.Del("ce-specversion") }, `{}`, "missing ce-specversion"},
		{"wrong specversion", func(h nats.Header) { h.Set("ce-specversion", "0.3") }, `{}`, `ce-specversion "0.3"`},
		{"missing source", func(h nats.Header) { h.Del("ce-source") }, `{}`, "missing ce-source"},
		{"missing type", func(h nats.Header) { h.Del("ce-type") }, `{}`, "missing ce-type"},
		{"bad time", func(h nats.Header) { h.Set("ce-time", "yesterday") }, `{}`, "not RFC 3339"},
		{"protobuf body", func(h nats.Header) { h.Set("content-type", "application/protobuf") }, `{}`, "want application/json"},
		{"not json", func(nats.Header) {}, `{"a":`, "not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := good()
			tt.change(h)
			_, err := natsbus.DecodeEvent(&nats.Msg{Subject: "berth.v1.events.deploy.completed.a", Header: h, Data: []byte(tt.data)})
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestPublishEventValidates(t *testing.T) {
	s := natstest.RunServer(t)
	b := withStreams(t, s)
	tests := []struct {
		name   string
		change func(*natsbus.Event)
		want   string
	}{
		{"outside events", func(e *natsbus.Event) { e.Subject = "berth.v1.work.build" }, "want berth.v1.events"},
		{"too short", func(e *natsbus.Event) { e.Subject = "berth.v1.events.deploy" }, "want berth.v1.events"},
		{"wildcard", func(e *natsbus.Event) { e.Subject = "berth.v1.events.deploy.*.a" }, "wildcard"},
		{"empty token", func(e *natsbus.Event) { e.Subject = "berth.v1.events.deploy..a" }, "empty token"},
		{"no id", func(e *natsbus.Event) { e.ID = "" }, "empty id"},
		{"id with space", func(e *natsbus.Event) { e.ID = "a b" }, "space"},
		{"no type", func(e *natsbus.Event) { e.Type = "" }, "empty type"},
		{"no source", func(e *natsbus.Event) { e.Source = "" }, "empty source"},
		{"no data", func(e *natsbus.Event) { e.Data = nil }, "nil data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := deployEvent(t, "v", "completed", "hotel/search")
			tt.change(&ev)
			err := b.PublishEvent(t.Context(), ev)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if got := streamMsgs(t, b, subjects.StreamEvents); got != 0 {
		t.Errorf("after invalid publishes: got %d events, want 0", got)
	}
}

func TestPublishEventWithoutStream(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s)
	err := b.PublishEvent(t.Context(), deployEvent(t, "x", "completed", "hotel/search"))
	if err == nil || !strings.Contains(err.Error(), "BERTH_EVENTS missing") {
		t.Fatalf("got %v, want an error saying BERTH_EVENTS is missing", err)
	}
}

func TestEventID(t *testing.T) {
	a := natsbus.EventID("dep-1", "completed", "42")
	if a != natsbus.EventID("dep-1", "completed", "42") {
		t.Errorf("same parts: got different ids")
	}
	if len(a) != 32 {
		t.Errorf("length: got %d, want 32", len(a))
	}
	for _, other := range [][]string{{"dep-1", "completed", "43"}, {"dep-1completed", "42"}, {"dep-", "1completed", "42"}} {
		if natsbus.EventID(other...) == a {
			t.Errorf("parts %q: got the id of [dep-1 completed 42], want a different one", other)
		}
	}
}

func TestConsumeEvents(t *testing.T) {
	s := natstest.RunServer(t)
	b := withStreams(t, s)
	var want []natsbus.Event
	for _, svc := range []string{"hotel/search", "hotel/booking", "flight/search"} {
		want = append(want, publishDeploy(t, b, svc, "completed", svc))
	}

	t.Run("ordered, caught up", func(t *testing.T) {
		var got []natsbus.EventDelivery
		err := b.ConsumeEvents(t.Context(), natsbus.EventConsumerConfig{StopWhenCaughtUp: true}, func(_ context.Context, d natsbus.EventDelivery) error {
			got = append(got, d)
			return nil
		})
		if err != nil {
			t.Fatalf("consume: %v", err)
		}
		if len(got) != len(want) {
			t.Fatalf("got %d events, want %d", len(got), len(want))
		}
		for i, d := range got {
			if d.Event.ID != want[i].ID || d.Subject != want[i].Subject || d.Sequence != uint64(i+1) {
				t.Errorf("event %d: got id %s subject %s seq %d, want %s %s %d", i, d.Event.ID, d.Subject, d.Sequence, want[i].ID, want[i].Subject, i+1)
			}
		}
	})

	t.Run("filter", func(t *testing.T) {
		var got []string
		err := b.ConsumeEvents(t.Context(), natsbus.EventConsumerConfig{
			StopWhenCaughtUp: true,
			FilterSubjects:   []string{"berth.v1.events.*.*.hotel.>"},
		}, func(_ context.Context, d natsbus.EventDelivery) error {
			got = append(got, d.Event.Subject)
			return nil
		})
		if err != nil {
			t.Fatalf("consume: %v", err)
		}
		if strings.Join(got, ",") != "hotel/search,hotel/booking" {
			t.Errorf("got %v, want [hotel/search hotel/booking]", got)
		}
	})

	t.Run("nothing matches", func(t *testing.T) {
		err := b.ConsumeEvents(t.Context(), natsbus.EventConsumerConfig{
			StopWhenCaughtUp: true, FilterSubjects: []string{"berth.v1.events.host.>"},
		}, func(context.Context, natsbus.EventDelivery) error {
			t.Errorf("fn called, want no events")
			return nil
		})
		if err != nil {
			t.Fatalf("consume: %v", err)
		}
	})

	t.Run("ordered stops at fn error", func(t *testing.T) {
		boom := errors.New("boom")
		n := 0
		err := b.ConsumeEvents(t.Context(), natsbus.EventConsumerConfig{}, func(context.Context, natsbus.EventDelivery) error {
			n++
			return boom
		})
		if !errors.Is(err, boom) || n != 1 {
			t.Errorf("got %v after %d calls, want boom after 1", err, n)
		}
	})

	t.Run("durable redelivers and resumes", func(t *testing.T) {
		cfg := natsbus.EventConsumerConfig{Durable: "test-durable", StopWhenCaughtUp: true, NakDelay: 10 * time.Millisecond}
		var seqs []uint64
		failed := false
		err := b.ConsumeEvents(t.Context(), cfg, func(_ context.Context, d natsbus.EventDelivery) error {
			if d.Sequence == 2 && !failed {
				failed = true
				return errors.New("transient")
			}
			seqs = append(seqs, d.Sequence)
			return nil
		})
		if err != nil {
			t.Fatalf("consume: %v", err)
		}
		// Event 2 was nakked: the consumer caught up at event 3 and stopped.
		if len(seqs) != 2 || seqs[0] != 1 || seqs[1] != 3 {
			t.Fatalf("first run: got seqs %v, want [1 3]", seqs)
		}
		// The second run gets the nakked event again, and nothing that was acked.
		seqs = nil
		var delivered uint64
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		err = b.ConsumeEvents(ctx, natsbus.EventConsumerConfig{Durable: "test-durable"}, func(_ context.Context, d natsbus.EventDelivery) error {
			seqs = append(seqs, d.Sequence)
			delivered = d.Delivered
			cancel()
			return nil
		})
		if err != nil {
			t.Fatalf("second run: %v", err)
		}
		if len(seqs) != 1 || seqs[0] != 2 || delivered != 2 {
			t.Fatalf("second run: got seqs %v delivered %d, want [2] delivered 2", seqs, delivered)
		}
	})
}

func TestConsumeEventsMissingStream(t *testing.T) {
	s := natstest.RunServer(t)
	b := connect(t, s)
	err := b.ConsumeEvents(t.Context(), natsbus.EventConsumerConfig{StopWhenCaughtUp: true}, func(context.Context, natsbus.EventDelivery) error { return nil })
	if !errors.Is(err, natsbus.ErrStreamNotFound) {
		t.Fatalf("got %v, want ErrStreamNotFound", err)
	}
}

func TestEventConsumerConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  natsbus.EventConsumerConfig
		want string
	}{
		{"zero", natsbus.EventConsumerConfig{}, ""},
		{"filter outside", natsbus.EventConsumerConfig{FilterSubjects: []string{"berth.v1.work.>"}}, "not under berth.v1.events"},
		{"bad filter", natsbus.EventConsumerConfig{FilterSubjects: []string{"berth.v1.events.>.a"}}, "not the last token"},
		{"bad durable", natsbus.EventConsumerConfig{Durable: "a.b"}, "durable name"},
		{"new and time", natsbus.EventConsumerConfig{DeliverNew: true, StartTime: time.Now()}, "both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestConsumeEventsAcrossServerRestart(t *testing.T) {
	s := natstest.RunServer(t)
	b := withStreams(t, s)
	publishDeploy(t, b, "1", "started", "hotel/search")
	got := make(chan uint64, 10)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- b.ConsumeEvents(ctx, natsbus.EventConsumerConfig{}, func(_ context.Context, d natsbus.EventDelivery) error {
			got <- d.Sequence
			return nil
		})
	}()
	wait := func(want uint64) {
		t.Helper()
		select {
		case seq := <-got:
			if seq != want {
				t.Fatalf("got seq %d, want %d", seq, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("seq %d not delivered within 10s", want)
		}
	}
	wait(1)
	s.Restart()
	ev := deployEvent(t, "2", "completed", "hotel/search")
	for deadline := time.Now().Add(10 * time.Second); ; {
		pctx, pcancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		err := b.PublishEvent(pctx, ev)
		pcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish after restart: %v", err)
		}
	}
	wait(2)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("consume: got %v, want nil after cancel", err)
	}
}
