package natsbus

import "testing"

func TestSubjectClass(t *testing.T) {
	tests := []struct{ subject, want string }{
		{"berth.v1.rpc.build", "rpc.build"},
		{"berth.v1.work.place", "work.place"},
		{"berth.v1.agent.h-017.step", "agent.step"},
		{"berth.v1.agent.progress.t1", "agent.progress"},
		{"berth.v1.agent.result.t1", "agent.result"},
		{"berth.v1.agent.h-017", "agent"},
		{"berth.v1.events.deploy.completed.hotel.search", "events.deploy"},
		{"berth.v1.names.view.hotel.search", "names.view"},
		{"_INBOX.abc", "other"},
		{"berth.v2.rpc.build", "other"},
	}
	for _, tt := range tests {
		if got := subjectClass(tt.subject); got != tt.want {
			t.Errorf("subjectClass(%q): got %q, want %q", tt.subject, got, tt.want)
		}
	}
}
