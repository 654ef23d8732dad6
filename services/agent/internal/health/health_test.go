package health

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestTracker(t *testing.T) {
	p := Policy{Rise: 2, Fall: 3, FlapChanges: 3, FlapWindow: time.Minute}
	tests := []struct {
		name    string
		healthy bool   // start healthy
		checks  string // one character per check, 1 s apart: + pass, - fail
		want    string // verdict after each check: U unknown, H healthy, X unhealthy, F flapping
	}{
		{"healthy after rise", false, "++", "UH"},
		{"a failure resets rise", false, "+-++", "UUUH"},
		{"unhealthy after fall", false, "++---", "UHHHX"},
		{"fall needs consecutive failures", false, "++--+---", "UHHHHHHX"},
		{"unknown to unhealthy", false, "---", "UUX"},
		{"back to healthy after rise", false, "++---++", "UHHHXXH"},
		{"starts healthy", true, "+--", "HHH"},
		{"starts healthy, falls", true, "---", "HHX"},
		// Changes: H(t2) is not counted (from unknown); X at t5, H t7, X t10, H t12 is the
		// fourth change within the minute: flapping.
		{"flapping after too many changes", false, "++---++---++", "UHHHXXHHHXXF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTracker(p)
			if tt.healthy {
				tr = NewHealthyTracker(p)
			}
			now := time.Unix(1000, 0)
			var got []byte
			for _, c := range tt.checks {
				now = now.Add(time.Second)
				v, _ := tr.Observe(c == '+', now)
				got = append(got, letter(v))
			}
			if string(got) != tt.want {
				t.Errorf("checks %s: got %s, want %s", tt.checks, got, tt.want)
			}
		})
	}
}

func TestFlappingHeldUntilStable(t *testing.T) {
	p := Policy{Rise: 1, Fall: 1, FlapChanges: 2, FlapWindow: 10 * time.Second}
	tr := NewHealthyTracker(p)
	now := time.Unix(1000, 0)
	step := func(pass bool, d time.Duration) (Verdict, bool) {
		now = now.Add(d)
		return tr.Observe(pass, now)
	}
	step(false, time.Second) // change 1
	step(true, time.Second)  // change 2
	if v, changed := step(false, time.Second); v != Flapping || !changed {
		t.Fatalf("third change within the window: got %v (changed %v), want flapping", v, changed)
	}
	// Passing again does not end flapping while changes are in the window.
	for i := range 9 {
		if v, _ := step(true, time.Second); v != Flapping {
			t.Fatalf("pass %d after flapping, %s after the last change: got %v, want flapping", i+1, time.Duration(i+1)*time.Second, v)
		}
	}
	// A full window without changes: healthy again, reported as a change.
	if v, changed := step(true, 2*time.Second); v != Healthy || !changed {
		t.Fatalf("after a stable window: got %v (changed %v), want healthy", v, changed)
	}
}

func TestFlappingOff(t *testing.T) {
	tr := NewTracker(Policy{Rise: 1, Fall: 1, FlapChanges: -1})
	now := time.Unix(0, 0)
	for i := range 50 {
		now = now.Add(time.Second)
		if v, _ := tr.Observe(i%2 == 0, now); v == Flapping {
			t.Fatalf("check %d: got flapping with detection off", i)
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	tests := []struct {
		p  Policy
		ok bool
	}{
		{Policy{Rise: 1, Fall: 1}, true},
		{Policy{Rise: 0, Fall: 1}, false},
		{Policy{Rise: 1, Fall: 0}, false},
		{Policy{Rise: 1, Fall: 1, FlapWindow: -time.Second}, false},
	}
	for _, tt := range tests {
		if err := tt.p.Validate(); (err == nil) != tt.ok {
			t.Errorf("Validate(%+v): got %v, want ok=%v", tt.p, err, tt.ok)
		}
	}
}

func letter(v Verdict) byte {
	switch v {
	case Healthy:
		return 'H'
	case Unhealthy:
		return 'X'
	case Flapping:
		return 'F'
	}
	return 'U'
}
