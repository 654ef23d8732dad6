package natsbus_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	eventsv1 "github.com/berthdev/berth/proto/events/v1"
)

func BenchmarkRequest(b *testing.B) {
	s := natstest.RunServer(b)
	bus, err := natsbus.Connect(b.Context(), natsbus.Config{URLs: []string{s.URL()}})
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close(context.Background())
	_, err = natsbus.HandleTyped(b.Context(), bus, "berth.v1.rpc.bench", "", func(_ context.Context, req *eventsv1.HostEvent) (*eventsv1.HostEvent, error) {
		return req, nil
	})
	if err != nil {
		b.Fatal(err)
	}
	req := &eventsv1.HostEvent{Host: "h-017", Dc: "bj", State: "ready"}
	for b.Loop() {
		if err := bus.Request(b.Context(), "berth.v1.rpc.bench", req, &eventsv1.HostEvent{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPublishEvent(b *testing.B) {
	s := natstest.RunServer(b)
	bus, err := natsbus.Connect(b.Context(), natsbus.Config{URLs: []string{s.URL()}})
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close(context.Background())
	if err := bus.EnsureStreams(b.Context(), natsbus.StreamConfig{}); err != nil {
		b.Fatal(err)
	}
	ev := natsbus.Event{Subject: "berth.v1.events.deploy.completed.hotel.search", Type: "dev.berth.deploy.completed",
		Source: "bench", ServicePath: "hotel/search", Data: &eventsv1.DeployEvent{DeploymentId: "d", Service: "hotel/search", State: "succeeded"}}
	i := 0
	for b.Loop() {
		i++
		ev.ID = natsbus.EventID("bench", strconv.Itoa(i))
		if err := bus.PublishEvent(b.Context(), ev); err != nil {
			b.Fatal(err)
		}
	}
}
