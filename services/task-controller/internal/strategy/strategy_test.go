package strategy

import (
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPlan(t *testing.T) {
	cases := []struct {
		batches []string
		total   int
		want    string
	}{
		{[]string{"100%"}, 5, "[0,5)"},
		{[]string{"1", "10%", "50%", "100%"}, 100, "[0,1) [1,10) [10,50) [50,100)"},
		// 10% of 5 rounds up to 1, the same as the first batch: that entry adds nothing.
		{[]string{"1", "10%", "50%", "100%"}, 5, "[0,1) [1,3) [3,5)"},
		{[]string{"1", "25%", "100%"}, 1, "[0,1)"},
		{[]string{"2", "5", "100%"}, 3, "[0,2) [2,3)"},
		{[]string{"50%", "100%"}, 7, "[0,4) [4,7)"},
		{[]string{"33.3%", "100%"}, 3, "[0,1) [1,3)"},
		{[]string{"1", "100%"}, 0, ""},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.batches, tc.total), func(t *testing.T) {
			bs, err := Plan(tc.batches, tc.total)
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			got := ""
			for i, b := range bs {
				if i > 0 {
					got += " "
				}
				if int(b.GetIndex()) != i {
					t.Errorf("batch %d has index %d", i, b.GetIndex())
				}
				got += fmt.Sprintf("[%d,%d)", b.GetStart(), b.GetEnd())
			}
			if got != tc.want {
				t.Errorf("Plan(%v, %d): got %s, want %s", tc.batches, tc.total, got, tc.want)
			}
		})
	}
}

func TestValidateBatches(t *testing.T) {
	cases := []struct {
		batches []string
		field   string
	}{
		{[]string{"1", "10%", "100%"}, ""},
		{[]string{"100%"}, ""},
		{nil, "batches"},
		{[]string{"1", "50%"}, "batches"},
		{[]string{"10"}, "batches"},
		{[]string{"50%", "10%", "100%"}, "batches[1]"},
		{[]string{"5", "3", "100%"}, "batches[1]"},
		{[]string{"0", "100%"}, "batches[0]"},
		{[]string{"-1", "100%"}, "batches[0]"},
		{[]string{"150%"}, "batches[0]"},
		{[]string{"x", "100%"}, "batches[0]"},
		{[]string{"NaN%", "100%"}, "batches[0]"},
	}
	for _, tc := range cases {
		err := ValidateBatches("batches", tc.batches)
		got := ""
		if fe, ok := err.(*FieldError); ok {
			got = fe.Field
		} else if err != nil {
			t.Fatalf("%v: error %v is not a *FieldError", tc.batches, err)
		}
		if got != tc.field {
			t.Errorf("ValidateBatches(%v): got field %q (%v), want %q", tc.batches, got, err, tc.field)
		}
	}
}

func TestBudget(t *testing.T) {
	cases := []struct {
		s     string
		total int
		want  int
	}{
		{"0", 10, 0}, {"2", 10, 2}, {"10%", 10, 1}, {"10%", 9, 0}, {"15%", 20, 3}, {"100%", 7, 7}, {"0%", 100, 0},
	}
	for _, tc := range cases {
		if got := Budget(tc.s, tc.total); got != tc.want {
			t.Errorf("Budget(%q, %d): got %d, want %d", tc.s, tc.total, got, tc.want)
		}
	}
}

func TestParsePause(t *testing.T) {
	cases := []struct {
		s      string
		d      time.Duration
		manual bool
		bad    bool
	}{
		{"", 0, false, false}, {"none", 0, false, false}, {"manual", 0, true, false}, {"30s", 30 * time.Second, false, false},
		{"0s", 0, false, true}, {"-1s", 0, false, true}, {"forever", 0, false, true}, {"1000h", 0, false, true},
	}
	for _, tc := range cases {
		d, manual, err := ParsePause(tc.s)
		if (err != nil) != tc.bad || d != tc.d || manual != tc.manual {
			t.Errorf("ParsePause(%q): got %s, %t, %v; want %s, %t, error %t", tc.s, d, manual, err, tc.d, tc.manual, tc.bad)
		}
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name  string
		s     *controllerv1.Strategy
		field string
	}{
		{"empty", &controllerv1.Strategy{}, ""},
		{"good", &controllerv1.Strategy{Batches: []string{"1", "100%"}, MaxParallel: proto.Uint32(5), Pause: proto.String("manual"),
			MaxFailures: proto.String("10%"), ProgressDeadline: durationpb.New(time.Minute)}, ""},
		{"max_parallel", &controllerv1.Strategy{MaxParallel: proto.Uint32(MaxParallel + 1)}, "s.max_parallel"},
		{"pause", &controllerv1.Strategy{Pause: proto.String("later")}, "s.pause"},
		{"max_failures", &controllerv1.Strategy{MaxFailures: proto.String("-1")}, "s.max_failures"},
		{"health deadline zero", &controllerv1.Strategy{HealthGate: &controllerv1.HealthGate{Deadline: durationpb.New(0)}}, "s.health_gate.deadline"},
		{"negative min healthy", &controllerv1.Strategy{HealthGate: &controllerv1.HealthGate{MinHealthyTime: durationpb.New(-time.Second)}}, "s.health_gate.min_healthy_time"},
		{"step timeout", &controllerv1.Strategy{StepTimeout: durationpb.New(48 * time.Hour)}, "s.step_timeout"},
		{"infra retries", &controllerv1.Strategy{InfraRetries: proto.Uint32(100)}, "s.infra_retries"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate("s.", tc.s)
			got := ""
			if fe, ok := err.(*FieldError); ok {
				got = fe.Field
			}
			if got != tc.field {
				t.Errorf("got field %q (%v), want %q", got, err, tc.field)
			}
		})
	}
}

func TestEffectiveInheritsFieldByField(t *testing.T) {
	layers := []Layer{
		{Source: "hotel", Policy: &controllerv1.Policy{Strategy: &controllerv1.Strategy{Batches: []string{"1", "100%"}, MaxParallel: proto.Uint32(4)},
			DnsTtl: durationpb.New(10 * time.Second)}},
		{Source: "hotel/search", Policy: nil},
		{Source: "hotel/search/api", Policy: &controllerv1.Policy{Strategy: &controllerv1.Strategy{MaxParallel: proto.Uint32(0),
			HealthGate: &controllerv1.HealthGate{MinHealthyTime: durationpb.New(time.Minute)}}}},
	}
	eff, values := Effective(layers)
	if got := eff.GetStrategy().GetBatches(); len(got) != 2 || got[0] != "1" {
		t.Errorf("batches: got %v, want [1 100%%] from hotel", got)
	}
	if got := eff.GetStrategy().GetMaxParallel(); got != 0 {
		t.Errorf("max_parallel: got %d, want 0 (the child sets 0 explicitly)", got)
	}
	if got := eff.GetStrategy().GetHealthGate().GetDeadline().AsDuration(); got != DefaultHealthDeadline {
		t.Errorf("health_gate.deadline: got %s, want the default %s (the sibling field was set, not this one)", got, DefaultHealthDeadline)
	}
	want := map[string]string{
		"strategy.batches":                      "hotel",
		"strategy.max_parallel":                 "hotel/search/api",
		"strategy.health_gate.min_healthy_time": "hotel/search/api",
		"strategy.health_gate.deadline":         SourceDefault,
		"strategy.pause":                        SourceDefault,
		"dns_ttl":                               "hotel",
		"health.rise":                           SourceDefault,
	}
	got := map[string]string{}
	for _, v := range values {
		got[v.GetField()] = v.GetSource()
	}
	for f, w := range want {
		if got[f] != w {
			t.Errorf("%s: got source %q, want %q", f, got[f], w)
		}
	}
	if len(values) != 15 {
		t.Errorf("got %d effective values, want every leaf field (15)", len(values))
	}
}

func TestMergeReplacesLists(t *testing.T) {
	dst := &controllerv1.Strategy{Batches: []string{"1", "50%", "100%"}, Pause: proto.String("manual")}
	Merge(dst, &controllerv1.Strategy{Batches: []string{"100%"}, AutoRollback: proto.Bool(true)})
	if len(dst.GetBatches()) != 1 || dst.GetPause() != "manual" || !dst.GetAutoRollback() {
		t.Errorf("got %v, want batches [100%%], pause manual kept, auto_rollback set", dst)
	}
}
