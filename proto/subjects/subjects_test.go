package subjects

import (
	"errors"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFormatForms(t *testing.T) {
	tests := []struct {
		name string
		got  func() (string, error)
		want string
	}{
		{"deploy", func() (string, error) { return DeployEvent("completed", "hotel/search") }, "berth.v1.events.deploy.completed.hotel.search"},
		{"deploy slashes trimmed", func() (string, error) { return DeployEvent("requested", "/hotel/") }, "berth.v1.events.deploy.requested.hotel"},
		{"instance", func() (string, error) { return InstanceEvent("healthy", "a/b/c") }, "berth.v1.events.instance.healthy.a.b.c"},
		{"image", func() (string, error) { return ImageEvent("built", "hotel") }, "berth.v1.events.image.built.hotel"},
		{"task", func() (string, error) { return TaskEvent("completed", "t-1") }, "berth.v1.events.task.completed.t-1"},
		{"host", func() (string, error) { return HostEvent("down", "h-017") }, "berth.v1.events.host.down.h-017"},
		{"template", func() (string, error) { return TemplateEvent("reloaded", "h-1") }, "berth.v1.events.template.reloaded.h-1"},
		{"alloc", func() (string, error) { return AllocEvent("rescheduled", "hotel/search") }, "berth.v1.events.alloc.rescheduled.hotel.search"},
		{"audit", func() (string, error) { return AuditEvent("denied", "flight") }, "berth.v1.events.audit.denied.flight"},
		{"step", func() (string, error) { return AgentStep("h-1") }, "berth.v1.agent.h-1.step"},
		{"progress", func() (string, error) { return AgentProgressFor("t-1") }, "berth.v1.agent.progress.t-1"},
		{"result", func() (string, error) { return AgentResultFor("t-1") }, "berth.v1.agent.result.t-1"},
		{"view", func() (string, error) { return NamesView("hotel/search") }, "berth.v1.names.view.hotel.search"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.got()
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestBadTokens(t *testing.T) {
	bad := []struct {
		name string
		fn   func() (string, error)
	}{
		{"empty service", func() (string, error) { return DeployEvent("x", "") }},
		{"dot in service", func() (string, error) { return DeployEvent("x", "hotel.search") }},
		{"wildcard in service", func() (string, error) { return DeployEvent("x", "hotel/*") }},
		{"empty segment", func() (string, error) { return DeployEvent("x", "hotel//search") }},
		{"space in host", func() (string, error) { return HostEvent("down", "h 1") }},
		{"dollar host", func() (string, error) { return AgentStep("$SYS") }},
		{"reserved host", func() (string, error) { return AgentStep("progress") }},
		{"bad type", func() (string, error) { return DeployEvent("a.b", "hotel") }},
		{"gt in task", func() (string, error) { return AgentResultFor(">") }},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.fn()
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("got %q, %v; want ErrBadToken", got, err)
			}
		})
	}
}

func TestServicePathRoundTrip(t *testing.T) {
	tok, err := ServiceTokens("hotel/search/v2")
	if err != nil {
		t.Fatal(err)
	}
	if got := ServicePath(tok); got != "hotel/search/v2" {
		t.Fatalf("got %q, want hotel/search/v2", got)
	}
	if got := EventType(DomainDeploy, "completed"); got != "dev.berth.deploy.completed" {
		t.Fatalf("EventType: got %q", got)
	}
}
