package scheduler

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/berthdev/berth/pkg/natsbus"
	commonv1 "github.com/berthdev/berth/proto/common/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		mod  func(*Config)
		want string
	}{
		{func(*Config) {}, ""},
		{func(c *Config) { c.MaxCount = 64 }, "max_count"},
		{func(c *Config) { c.MaxCount = 0 }, "max_count"},
		{func(c *Config) { c.SampleMin = 0 }, "sample_min"},
		{func(c *Config) { c.RescheduleInterval = 0 }, "reschedule_interval"},
		{func(c *Config) { c.RecordTTL = time.Second }, "record_ttl"},
		{func(c *Config) { c.WorkConsumer = "a.b" }, "work_consumer"},
		{func(c *Config) { c.Coord = "nohost" }, "coord"},
		{func(c *Config) { c.Name = "" }, "name"},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		c.Name = "t"
		tt.mod(&c)
		err := c.Validate()
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("Validate: got %v, want an error naming %q", err, tt.want)
		}
	}
}

func TestValidateRequest(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Name = "t"
	s, err := New(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	res := &inventoryv1.Resources{CpuMillis: 100, MemoryBytes: 1 << 20}
	ok := func(m func(r *inventoryv1.PlacementRequest)) *inventoryv1.PlacementRequest {
		r := &inventoryv1.PlacementRequest{Service: "hotel/search", Count: 2, Resources: res}
		m(r)
		return r
	}
	tests := []struct {
		req   *inventoryv1.PlacementRequest
		field string
	}{
		{ok(func(*inventoryv1.PlacementRequest) {}), ""},
		{ok(func(r *inventoryv1.PlacementRequest) {
			r.Constraints = "dc in (a,b), has ssd"
			r.Spread = "rack"
			r.PreferredDcs = []string{"a"}
		}), ""},
		{ok(func(r *inventoryv1.PlacementRequest) { r.Count = 0 }), "count"},
		{ok(func(r *inventoryv1.PlacementRequest) { r.Count = 61 }), "count"},
		{ok(func(r *inventoryv1.PlacementRequest) { r.Resources = &inventoryv1.Resources{MemoryBytes: 1} }), "resources.cpu_millis"},
		{ok(func(r *inventoryv1.PlacementRequest) { r.Resources = &inventoryv1.Resources{CpuMillis: 1} }), "resources.memory_bytes"},
		{ok(func(r *inventoryv1.PlacementRequest) { r.Spread = "host" }), "spread"},
		{ok(func(r *inventoryv1.PlacementRequest) { r.Constraints = "dc in (a" }), "constraints"},
		{ok(func(r *inventoryv1.PlacementRequest) { r.Service = "a..b" }), "service"},
		{ok(func(r *inventoryv1.PlacementRequest) { r.PreferredDcs = []string{"a", "a"} }), "preferred_dcs[1]"},
		{ok(func(r *inventoryv1.PlacementRequest) { r.DeploymentId = "x y" }), "deployment_id"},
	}
	for _, tt := range tests {
		_, err := s.validate(tt.req)
		if tt.field == "" {
			if err != nil {
				t.Errorf("validate(%v): %v", tt.req, err)
			}
			continue
		}
		var se *natsbus.StatusError
		if !errors.As(err, &se) || se.Code != commonv1.Code_CODE_INVALID_ARGUMENT || se.Details["field"] != tt.field {
			t.Errorf("validate(%v): got %v, want INVALID_ARGUMENT naming %s", tt.req, err, tt.field)
		}
	}
}

func TestAllocEventSubject(t *testing.T) {
	got, err := AllocEvent(EventRescheduled, "hotel/search")
	if err != nil || got != "berth.v1.events.alloc.rescheduled.hotel.search" {
		t.Fatalf("got %q %v", got, err)
	}
	if _, err := AllocEvent("a.b", "x"); err == nil {
		t.Fatal("bad type: got no error")
	}
}
