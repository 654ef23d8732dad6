package dnsview

import (
	"errors"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNames(t *testing.T) {
	tests := []struct {
		service, id, zone string
		want              string
		wantErr           bool
	}{
		{service: "hotel/search", zone: "ns.berth.internal", want: "search.hotel.ns.berth.internal."},
		{service: "Hotel/Search", zone: "NS.Berth.Internal.", want: "search.hotel.ns.berth.internal."},
		{service: "hotel/search", id: "i-1", zone: "ns.berth.internal", want: "i-1.search.hotel.ns.berth.internal."},
		{service: "flight", zone: "example", want: "flight.example."},
		{service: "hotel//search", zone: "z", wantErr: true},
		{service: "/hotel", zone: "z", wantErr: true},
		{service: "hotel.search", zone: "z", wantErr: true},
		{service: strings.Repeat("a", 64), zone: "z", wantErr: true},
		{service: "a", zone: "", wantErr: true},
		{service: "a", id: "bad id", zone: "z", wantErr: true},
	}
	for _, tt := range tests {
		var got string
		var err error
		if tt.id == "" {
			got, err = ServiceName(tt.service, tt.zone)
		} else {
			got, err = InstanceName(tt.service, tt.id, tt.zone)
		}
		if tt.wantErr {
			if !errors.Is(err, ErrBadName) {
				t.Errorf("name(%q, %q, %q): got %q, %v; want ErrBadName", tt.service, tt.id, tt.zone, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("name(%q, %q, %q): got %q, %v; want %q", tt.service, tt.id, tt.zone, got, err, tt.want)
		}
	}

	split := []struct {
		qname  string
		labels []string
		ok     bool
	}{
		{"search.hotel.ns.berth.internal.", []string{"search", "hotel"}, true},
		{"SEARCH.Hotel.ns.berth.internal", []string{"search", "hotel"}, true},
		{"ns.berth.internal.", nil, true},
		{"xns.berth.internal.", nil, false},
		{"berth.internal.", nil, false},
		{"example.com.", nil, false},
	}
	for _, tt := range split {
		got, ok := SplitName(tt.qname, "ns.berth.internal.")
		if ok != tt.ok || !slices.Equal(got, tt.labels) {
			t.Errorf("SplitName(%q): got %q, %v; want %q, %v", tt.qname, got, ok, tt.labels, tt.ok)
		}
	}
	if got := ServicePath([]string{"search", "hotel"}); got != "hotel/search" {
		t.Errorf("ServicePath: got %q, want hotel/search", got)
	}
}

func TestValidatePolicy(t *testing.T) {
	known := func(dc string) bool { return dc == "dc1" || dc == "dc2" }
	tests := []struct {
		name  string
		p     *namesv1.TrafficPolicy
		field string // "" means valid
	}{
		{"empty", &namesv1.TrafficPolicy{}, ""},
		{"full", &namesv1.TrafficPolicy{
			Mode: namesv1.AnswerMode_ANSWER_MODE_LIMIT, Limit: 2, MinHealthy: 2,
			VersionWeights: map[string]uint32{"1.4.1": 90, "1.4.2": 10}, InstanceWeights: map[string]uint32{"i-1": 0},
			DcOverrides: map[string]string{"dc1": "dc2"}, Pin: []string{"i-2"}, Exclude: []string{"i-3"}, PanicThreshold: 50,
		}, ""},
		{"panic below 0", &namesv1.TrafficPolicy{PanicThreshold: -1}, "panic_threshold"},
		{"panic above 100", &namesv1.TrafficPolicy{PanicThreshold: 100.5}, "panic_threshold"},
		{"panic NaN", &namesv1.TrafficPolicy{PanicThreshold: math.NaN()}, "panic_threshold"},
		{"unknown dc target", &namesv1.TrafficPolicy{DcOverrides: map[string]string{"dc1": "dc9"}}, `dc_overrides["dc1"]`},
		{"unknown dc client", &namesv1.TrafficPolicy{DcOverrides: map[string]string{"dc9": "dc1"}}, `dc_overrides["dc9"]`},
		{"limit without mode", &namesv1.TrafficPolicy{Limit: 3}, "limit"},
		{"limit mode without limit", &namesv1.TrafficPolicy{Mode: namesv1.AnswerMode_ANSWER_MODE_LIMIT}, "limit"},
		{"unknown mode", &namesv1.TrafficPolicy{Mode: 42}, "mode"},
		{"all version weights zero", &namesv1.TrafficPolicy{VersionWeights: map[string]uint32{"a": 0}}, "version_weights"},
		{"weight too big", &namesv1.TrafficPolicy{VersionWeights: map[string]uint32{"a": MaxWeight + 1}}, `version_weights["a"]`},
		{"version with shell characters", &namesv1.TrafficPolicy{VersionWeights: map[string]uint32{"1;touch x": 1}}, `version_weights["1;touch x"]`},
		{"version with a newline", &namesv1.TrafficPolicy{VersionWeights: map[string]uint32{"1\n2": 1}}, `version_weights["1\n2"]`},
		{"version too long", &namesv1.TrafficPolicy{VersionWeights: map[string]uint32{strings.Repeat("1", 129): 1}}, `version_weights["` + strings.Repeat("1", 40) + `"]`},
		{"version starting with a dot", &namesv1.TrafficPolicy{VersionWeights: map[string]uint32{".1": 1}}, `version_weights[".1"]`},
		{"bad instance id", &namesv1.TrafficPolicy{InstanceWeights: map[string]uint32{"a b": 1}}, `instance_weights["a b"]`},
		{"pinned and excluded", &namesv1.TrafficPolicy{Pin: []string{"x"}, Exclude: []string{"x"}}, "exclude[0]"},
		{"pinned twice", &namesv1.TrafficPolicy{Pin: []string{"x", "x"}}, "pin[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidatePolicy(tt.p, known)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("got %v, want nil", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field || !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("got %v, want a FieldError on %s", err, tt.field)
			}
		})
	}
}

func TestParseWeights(t *testing.T) {
	got, err := ParseWeights("weights", "1.4.1=90, 1.4.2=10")
	if err != nil || len(got) != 2 || got["1.4.1"] != 90 || got["1.4.2"] != 10 {
		t.Fatalf("got %v, %v; want 1.4.1=90 1.4.2=10", got, err)
	}
	if s := FormatWeights(got); s != "1.4.1=90,1.4.2=10" {
		t.Fatalf("FormatWeights: got %q", s)
	}
	for _, bad := range []string{"", "1.4.1", "=5", "a=x", "a=-1", "a=1,a=2", "a=1000001", "a=1.5"} {
		_, err := ParseWeights("weights", bad)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "weights" {
			t.Errorf("ParseWeights(%q): got %v, want a FieldError on weights", bad, err)
		}
	}
}

func TestLocator(t *testing.T) {
	subnets, err := ParseSubnets("dc_subnets", []string{"10.0.0.0/8=dc1", "10.2.0.0/16=dc2", "fd00::/8=dc3"})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLocator(subnets, map[netip.Addr]string{netip.MustParseAddr("10.2.0.7"): "dc9"})
	tests := []struct {
		addr string
		dc   string
	}{
		{"10.1.2.3", "dc1"},
		{"10.2.3.4", "dc2"},
		{"10.2.0.7", "dc9"},
		{"::ffff:10.2.0.7", "dc9"},
		{"fd00::1", "dc3"},
		{"192.168.0.1", ""},
	}
	for _, tt := range tests {
		got, ok := l.DC(netip.MustParseAddr(tt.addr))
		if got != tt.dc || ok != (tt.dc != "") {
			t.Errorf("DC(%s): got %q, %v; want %q", tt.addr, got, ok, tt.dc)
		}
	}
	if !l.Known("dc9") || l.Known("dc7") {
		t.Errorf("Known: got dc9=%v dc7=%v, want true, false", l.Known("dc9"), l.Known("dc7"))
	}
	for _, bad := range [][]string{{"10.0.0.0/8"}, {"10.0.0.0/33=dc1"}, {"10.0.0.0/8=d c"}, {"10.0.0.0/8=a", "10.0.0.0/8=b"}} {
		if _, err := ParseSubnets("dc_subnets", bad); err == nil || !strings.Contains(err.Error(), "dc_subnets[") {
			t.Errorf("ParseSubnets(%q): got %v, want an error naming the entry", bad, err)
		}
	}
}

// inst builds an instance; opts are "unhealthy", "draining", "flapping", "w=N", "v=X".
func inst(id, ip, dc string, opts ...string) *namesv1.Instance {
	in := &namesv1.Instance{Id: id, Service: "hotel/search", Ip: ip, Port: 8080, Dc: dc, Version: "1.0", Health: namesv1.Health_HEALTH_HEALTHY}
	for _, o := range opts {
		switch {
		case o == "unhealthy":
			in.Health = namesv1.Health_HEALTH_UNHEALTHY
		case o == "flapping":
			in.Health = namesv1.Health_HEALTH_FLAPPING
		case o == "draining":
			in.State = namesv1.InstanceState_INSTANCE_STATE_DRAINING
		case strings.HasPrefix(o, "w="):
			w, _ := ParseWeights("w", "x="+o[2:])
			in.Weight = w["x"]
		case strings.HasPrefix(o, "v="):
			in.Version = o[2:]
		}
	}
	return in
}

func view(pol *namesv1.TrafficPolicy, ins ...*namesv1.Instance) *namesv1.ServiceView {
	v := &namesv1.ServiceView{Service: "hotel/search", Instances: ins, Policy: pol}
	st := UpdatePanic(ins, pol, nil)
	v.Panic, v.LastGood = st.Panic, st.LastGood
	return v
}

func ids(eps []Endpoint) []string {
	out := make([]string, len(eps))
	for i, e := range eps {
		out[i] = e.Instance.GetId()
	}
	return out
}

func sortedIDs(eps []Endpoint) []string {
	out := ids(eps)
	slices.Sort(out)
	return out
}

func TestSelectMatrix(t *testing.T) {
	fleet := func(opts map[string][]string) []*namesv1.Instance {
		return []*namesv1.Instance{
			inst("a1", "10.1.0.1", "dc1", opts["a1"]...),
			inst("a2", "10.1.0.2", "dc1", opts["a2"]...),
			inst("b1", "10.2.0.1", "dc2", opts["b1"]...),
			inst("b2", "10.2.0.2", "dc2", opts["b2"]...),
			inst("b3", "10.2.0.3", "dc2", opts["b3"]...),
		}
	}
	tests := []struct {
		name   string
		pol    *namesv1.TrafficPolicy
		opts   map[string][]string
		extra  []*namesv1.Instance
		q      Query
		want   []string
		rules  []Rule // must all be present
		panic_ bool
	}{
		{name: "same dc", q: Query{ClientDC: "dc1"}, want: []string{"a1", "a2"}, rules: []Rule{RuleSameDC, RuleAll}},
		{name: "same dc other", q: Query{ClientDC: "dc2"}, want: []string{"b1", "b2", "b3"}, rules: []Rule{RuleSameDC}},
		{name: "unknown client dc", q: Query{}, want: []string{"a1", "a2", "b1", "b2", "b3"}, rules: []Rule{RuleAnyDC}},
		{name: "client dc without instances", q: Query{ClientDC: "dc7"}, want: []string{"a1", "a2", "b1", "b2", "b3"}, rules: []Rule{RuleFailover}},
		{name: "failover below min_healthy", pol: &namesv1.TrafficPolicy{MinHealthy: 3}, q: Query{ClientDC: "dc1"},
			want: []string{"a1", "a2", "b1", "b2", "b3"}, rules: []Rule{RuleFailover}},
		{name: "min_healthy met", pol: &namesv1.TrafficPolicy{MinHealthy: 3}, q: Query{ClientDC: "dc2"},
			want: []string{"b1", "b2", "b3"}, rules: []Rule{RuleSameDC}},
		{name: "failover when local unhealthy", opts: map[string][]string{"a1": {"unhealthy"}, "a2": {"flapping"}}, q: Query{ClientDC: "dc1"},
			want: []string{"b1", "b2", "b3"}, rules: []Rule{RuleFailover}},
		{name: "draining not answered", opts: map[string][]string{"a1": {"draining"}}, q: Query{ClientDC: "dc1"},
			want: []string{"a2"}, rules: []Rule{RuleSameDC}},
		{name: "same dc disabled", pol: &namesv1.TrafficPolicy{DisableSameDc: true}, q: Query{ClientDC: "dc1"},
			want: []string{"a1", "a2", "b1", "b2", "b3"}, rules: []Rule{RuleAnyDC}},
		{name: "override", pol: &namesv1.TrafficPolicy{DcOverrides: map[string]string{"dc1": "dc2"}}, q: Query{ClientDC: "dc1"},
			want: []string{"b1", "b2", "b3"}, rules: []Rule{RuleOverride, RuleSameDC}},
		{name: "override other client untouched", pol: &namesv1.TrafficPolicy{DcOverrides: map[string]string{"dc1": "dc2"}}, q: Query{ClientDC: "dc2"},
			want: []string{"b1", "b2", "b3"}, rules: []Rule{RuleSameDC}},
		{name: "pin", pol: &namesv1.TrafficPolicy{Pin: []string{"b2"}}, q: Query{ClientDC: "dc1"},
			want: []string{"b2"}, rules: []Rule{RulePin, RuleFailover}},
		{name: "pin to dead ignored", pol: &namesv1.TrafficPolicy{Pin: []string{"b2"}}, opts: map[string][]string{"b2": {"unhealthy"}}, q: Query{ClientDC: "dc1"},
			want: []string{"a1", "a2"}, rules: []Rule{RuleSameDC}},
		{name: "exclude", pol: &namesv1.TrafficPolicy{Exclude: []string{"a1"}}, q: Query{ClientDC: "dc1"},
			want: []string{"a2"}, rules: []Rule{RuleExclude, RuleSameDC}},
		{name: "exclude all local fails over", pol: &namesv1.TrafficPolicy{Exclude: []string{"a1", "a2"}}, q: Query{ClientDC: "dc1"},
			want: []string{"b1", "b2", "b3"}, rules: []Rule{RuleFailover}},
		{name: "single", pol: &namesv1.TrafficPolicy{Mode: namesv1.AnswerMode_ANSWER_MODE_SINGLE, Pin: []string{"b3"}}, q: Query{},
			want: []string{"b3"}, rules: []Rule{RuleSingle}},
		{name: "panic answers last good", pol: &namesv1.TrafficPolicy{PanicThreshold: 50},
			opts: map[string][]string{"b1": {"unhealthy"}, "b2": {"unhealthy"}, "b3": {"unhealthy"}}, q: Query{ClientDC: "dc2"},
			// The view's last_good is set below from an earlier, healthy state.
			want: []string{"b1", "b2", "b3"}, rules: []Rule{RulePanic, RuleSameDC}, panic_: true},
		{name: "below threshold not reached", pol: &namesv1.TrafficPolicy{PanicThreshold: 40},
			opts: map[string][]string{"b1": {"unhealthy"}, "b2": {"unhealthy"}}, q: Query{ClientDC: "dc2"},
			want: []string{"b3"}, rules: []Rule{RuleSameDC}},
		{name: "ipv6 family", extra: []*namesv1.Instance{inst("c1", "fd00::1", "dc1")}, q: Query{ClientDC: "dc1", Family: IPv6},
			want: []string{"c1"}, rules: []Rule{RuleSameDC}},
		{name: "ipv4 family", extra: []*namesv1.Instance{inst("c1", "fd00::1", "dc1")}, q: Query{ClientDC: "dc1", Family: IPv4},
			want: []string{"a1", "a2"}, rules: []Rule{RuleSameDC}},
		{name: "bad address never answered", extra: []*namesv1.Instance{inst("c1", "not-an-ip", "dc1")}, q: Query{ClientDC: "dc1"},
			want: []string{"a1", "a2"}},
		{name: "zero instance weight drops", pol: &namesv1.TrafficPolicy{InstanceWeights: map[string]uint32{"a1": 0}}, q: Query{ClientDC: "dc1"},
			want: []string{"a2"}, rules: []Rule{RuleInstanceWeights}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ins := append(fleet(tt.opts), tt.extra...)
			v := view(tt.pol, ins...)
			if tt.panic_ {
				// Before the failure every instance was healthy.
				prev := UpdatePanic(fleet(nil), tt.pol, nil)
				st := UpdatePanic(ins, tt.pol, prev.LastGood)
				if !st.Panic {
					t.Fatalf("UpdatePanic: got no panic, want panic (%s)", st.Reason())
				}
				v.Panic, v.LastGood = st.Panic, st.LastGood
			}
			tab := Compile(v)
			r := rand.New(rand.NewPCG(1, 2))
			q := tt.q
			q.Explain = true
			a := tab.Select(nil, q, r)
			if got := sortedIDs(a.Endpoints); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v\nexplain:\n  %s", got, tt.want, strings.Join(a.Explain, "\n  "))
			}
			for _, rule := range tt.rules {
				if !slices.Contains(a.Rules, rule) {
					t.Errorf("rules: got %v, want %s among them", a.Rules, rule)
				}
			}
			if a.Panic != tt.panic_ {
				t.Errorf("panic: got %v, want %v", a.Panic, tt.panic_)
			}
			if len(a.Explain) == 0 {
				t.Errorf("explain: got nothing")
			}
		})
	}
}

func TestModes(t *testing.T) {
	ins := []*namesv1.Instance{inst("a", "10.0.0.1", ""), inst("b", "10.0.0.2", ""), inst("c", "10.0.0.3", ""), inst("d", "10.0.0.4", "")}
	r := rand.New(rand.NewPCG(3, 4))
	for _, tt := range []struct {
		pol  *namesv1.TrafficPolicy
		want int
	}{
		{nil, 4},
		{&namesv1.TrafficPolicy{Mode: namesv1.AnswerMode_ANSWER_MODE_ALL}, 4},
		{&namesv1.TrafficPolicy{Mode: namesv1.AnswerMode_ANSWER_MODE_LIMIT, Limit: 2}, 2},
		{&namesv1.TrafficPolicy{Mode: namesv1.AnswerMode_ANSWER_MODE_LIMIT, Limit: 9}, 4},
		{&namesv1.TrafficPolicy{Mode: namesv1.AnswerMode_ANSWER_MODE_SINGLE}, 1},
	} {
		tab := Compile(view(tt.pol, ins...))
		for range 100 {
			a := tab.Select(nil, Query{}, r)
			if len(a.Endpoints) != tt.want {
				t.Fatalf("mode %v: got %d instances, want %d", tt.pol.GetMode(), len(a.Endpoints), tt.want)
			}
			seen := map[string]bool{}
			for _, id := range ids(a.Endpoints) {
				if seen[id] {
					t.Fatalf("mode %v: %s answered twice in %v", tt.pol.GetMode(), id, ids(a.Endpoints))
				}
				seen[id] = true
			}
		}
	}
}

// within checks that count out of n is within 5 standard deviations of probability p.
func within(t *testing.T, what string, count, n int, p float64) {
	t.Helper()
	sd := math.Sqrt(float64(n) * p * (1 - p))
	if d := math.Abs(float64(count) - p*float64(n)); d > 5*sd+1 {
		t.Errorf("%s: got %d of %d (%.2f%%), want %.2f%% ± %.2f%%", what, count, n, 100*float64(count)/float64(n), 100*p, 500*sd/float64(n))
	}
}

func TestWeightsStatistics(t *testing.T) {
	const n = 10000
	tests := []struct {
		name string
		pol  *namesv1.TrafficPolicy
		ins  []*namesv1.Instance
		want map[string]float64 // probability of being first (single: of being the answer)
	}{
		{"instance weights single", &namesv1.TrafficPolicy{Mode: namesv1.AnswerMode_ANSWER_MODE_SINGLE},
			[]*namesv1.Instance{inst("a", "10.0.0.1", "", "w=10"), inst("b", "10.0.0.2", "", "w=30"), inst("c", "10.0.0.3", "", "w=60")},
			map[string]float64{"a": .1, "b": .3, "c": .6}},
		{"instance weights all first", nil,
			[]*namesv1.Instance{inst("a", "10.0.0.1", "", "w=10"), inst("b", "10.0.0.2", "", "w=30"), inst("c", "10.0.0.3", "", "w=60")},
			map[string]float64{"a": .1, "b": .3, "c": .6}},
		{"policy instance weights", &namesv1.TrafficPolicy{InstanceWeights: map[string]uint32{"a": 300}},
			[]*namesv1.Instance{inst("a", "10.0.0.1", ""), inst("b", "10.0.0.2", "")},
			map[string]float64{"a": .75, "b": .25}},
		{"gray split", &namesv1.TrafficPolicy{VersionWeights: map[string]uint32{"1.4.1": 90, "1.4.2": 10}},
			[]*namesv1.Instance{
				inst("old1", "10.0.0.1", "", "v=1.4.1"), inst("old2", "10.0.0.2", "", "v=1.4.1"), inst("old3", "10.0.0.3", "", "v=1.4.1"),
				inst("new1", "10.0.0.4", "", "v=1.4.2"), inst("ancient", "10.0.0.5", "", "v=1.3.0"),
			},
			map[string]float64{"old1": .3, "old2": .3, "old3": .3, "new1": .1, "ancient": 0}},
		{"gray split single", &namesv1.TrafficPolicy{Mode: namesv1.AnswerMode_ANSWER_MODE_SINGLE, VersionWeights: map[string]uint32{"1.4.1": 90, "1.4.2": 10}},
			[]*namesv1.Instance{inst("old1", "10.0.0.1", "", "v=1.4.1"), inst("new1", "10.0.0.4", "", "v=1.4.2", "w=500"), inst("new2", "10.0.0.5", "", "v=1.4.2", "w=500")},
			map[string]float64{"old1": .9, "new1": .05, "new2": .05}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := Compile(view(tt.pol, tt.ins...))
			r := rand.New(rand.NewPCG(42, 7))
			counts := map[string]int{}
			var buf []Endpoint
			for range n {
				a := tab.Select(buf, Query{}, r)
				buf = a.Endpoints
				counts[a.Endpoints[0].Instance.GetId()]++
			}
			probs := tab.Probabilities(Query{})
			for id, p := range tt.want {
				within(t, id, counts[id], n, p)
				if math.Abs(probs[id]-p) > 1e-9 {
					t.Errorf("Probabilities[%s]: got %v, want %v", id, probs[id], p)
				}
			}
		})
	}
}

func TestSelectDeterministic(t *testing.T) {
	ins := []*namesv1.Instance{inst("a", "10.0.0.1", ""), inst("b", "10.0.0.2", ""), inst("c", "10.0.0.3", ""), inst("d", "10.0.0.4", "")}
	tab := Compile(view(nil, ins...))
	run := func() []string {
		r := rand.New(rand.NewPCG(9, 9))
		var out []string
		for range 20 {
			out = append(out, strings.Join(ids(tab.Select(nil, Query{}, r).Endpoints), ","))
		}
		return out
	}
	a, b := run(), run()
	if !slices.Equal(a, b) {
		t.Fatalf("same seed: got %v then %v", a, b)
	}
	distinct := map[string]bool{}
	for _, s := range a {
		distinct[s] = true
	}
	if len(distinct) < 5 {
		t.Fatalf("got %d distinct orders of 20, want a shuffle", len(distinct))
	}
}

func TestUpdatePanic(t *testing.T) {
	pol := &namesv1.TrafficPolicy{PanicThreshold: 50}
	healthy := []*namesv1.Instance{inst("a", "10.0.0.1", ""), inst("b", "10.0.0.2", ""), inst("c", "10.0.0.3", ""), inst("d", "10.0.0.4", "", "draining")}
	st := UpdatePanic(healthy, pol, nil)
	if st.Panic || !slices.Equal(st.LastGood, []string{"a", "b", "c"}) || st.Active != 3 {
		t.Fatalf("healthy: got %+v, want no panic, last good a b c, 3 active", st)
	}
	sick := []*namesv1.Instance{inst("a", "10.0.0.1", "", "unhealthy"), inst("b", "10.0.0.2", "", "unhealthy"), inst("c", "10.0.0.3", ""), inst("d", "10.0.0.4", "", "draining")}
	st2 := UpdatePanic(sick, pol, st.LastGood)
	if !st2.Panic || !slices.Equal(st2.LastGood, st.LastGood) || st2.Healthy != 1 {
		t.Fatalf("sick: got %+v, want panic with the previous last good", st2)
	}
	if !strings.Contains(st2.Reason(), "1 of 3") {
		t.Errorf("reason: got %q, want it to count 1 of 3", st2.Reason())
	}
	// Exactly at the threshold is not panic.
	half := []*namesv1.Instance{inst("a", "10.0.0.1", "", "unhealthy"), inst("b", "10.0.0.2", "")}
	if st := UpdatePanic(half, pol, nil); st.Panic {
		t.Errorf("50%% healthy at threshold 50: got panic, want none")
	}
	if st := UpdatePanic(sick, nil, nil); st.Panic {
		t.Errorf("no threshold: got panic, want none")
	}
	// In panic with none of the last good set still registered: every active instance.
	v := &namesv1.ServiceView{Instances: sick, Policy: pol, Panic: true, LastGood: []string{"gone"}}
	a := Compile(v).Select(nil, Query{}, rand.New(rand.NewPCG(1, 1)))
	if got := sortedIDs(a.Endpoints); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("panic without last good: got %v, want a b c", got)
	}
}

func BenchmarkSelect(b *testing.B) {
	ins := []*namesv1.Instance{inst("a1", "10.1.0.1", "dc1"), inst("a2", "10.1.0.2", "dc1"), inst("b1", "10.2.0.1", "dc2")}
	tab := Compile(view(nil, ins...))
	r := rand.New(rand.NewPCG(1, 2))
	var buf []Endpoint
	b.ReportAllocs()
	for b.Loop() {
		buf = tab.Select(buf, Query{ClientDC: "dc1", Family: IPv4}, r).Endpoints
	}
}
