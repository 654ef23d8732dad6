package subjects

import "testing"

func TestNoServiceIsAValidTokenAndNoServicePath(t *testing.T) {
	got, err := AuditEvent("denied", NoService)
	if err != nil || got != "berth.v1.events.audit.denied._" {
		t.Fatalf("AuditEvent(denied, NoService): got %q, %v; want berth.v1.events.audit.denied._", got, err)
	}
}
