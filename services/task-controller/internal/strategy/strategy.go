// Package strategy holds the rollout rules of DESIGN §6: the default policy, the
// inheritance of policy down the service tree (field by field, with the node each value
// came from), the validation of a strategy, the planning of a ramp into batches over a
// number of targets, and the failure budget.
package strategy

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
)

// Defaults of the strategy and policy; DefaultPolicy returns them as a Policy.
const (
	DefaultPause            = "none"
	DefaultMaxFailures      = "0"
	DefaultHealthDeadline   = 30 * time.Second
	DefaultProgressDeadline = 30 * time.Minute
	DefaultStepTimeout      = 10 * time.Minute
	DefaultInfraRetries     = 5
	DefaultDNSTTL           = 5 * time.Second
)

// DefaultBatches is the default ramp: every target in one batch.
var DefaultBatches = []string{"100%"}

// Limits of a strategy.
const (
	MaxBatches       = 100
	MaxParallel      = 100000
	MaxPause         = 7 * 24 * time.Hour
	MaxStepTimeout   = 24 * time.Hour
	MaxDeadline      = 7 * 24 * time.Hour
	MaxInfraRetries  = 20
	MaxHealthDefault = time.Hour
)

// SourceDefault is the source of a policy value no node set.
const SourceDefault = "default"

// DefaultPolicy returns the controller's defaults with every field set.
func DefaultPolicy() *controllerv1.Policy {
	return &controllerv1.Policy{
		Strategy: &controllerv1.Strategy{
			Batches:     append([]string(nil), DefaultBatches...),
			MaxParallel: proto.Uint32(0),
			Pause:       proto.String(DefaultPause),
			MaxFailures: proto.String(DefaultMaxFailures),
			HealthGate: &controllerv1.HealthGate{
				MinHealthyTime: durationpb.New(0),
				Deadline:       durationpb.New(DefaultHealthDeadline),
			},
			ProgressDeadline: durationpb.New(DefaultProgressDeadline),
			AutoRollback:     proto.Bool(false),
			StepTimeout:      durationpb.New(DefaultStepTimeout),
			InfraRetries:     proto.Uint32(DefaultInfraRetries),
		},
		Health: &controllerv1.HealthPolicy{
			Interval: durationpb.New(time.Second),
			Timeout:  durationpb.New(time.Second),
			Rise:     proto.Uint32(1),
			Fall:     proto.Uint32(2),
		},
		DnsTtl: durationpb.New(DefaultDNSTTL),
	}
}

// isLeafMessage reports whether a message field is a value of its own (a Duration) rather
// than a group of policy fields.
func isLeafMessage(fd protoreflect.FieldDescriptor) bool {
	return fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == "google.protobuf.Duration"
}

// set reports whether a field counts as set in m: present, or for a list non-empty.
func set(m protoreflect.Message, fd protoreflect.FieldDescriptor) bool {
	if fd.IsList() {
		return m.Get(fd).List().Len() > 0
	}
	return m.Has(fd)
}

// Merge overrides dst with every field set in src, recursively for groups of fields; a
// list replaces the list of dst. Both must be of the same message type.
func Merge(dst, src proto.Message) {
	if src == nil || !src.ProtoReflect().IsValid() {
		return
	}
	merge(dst.ProtoReflect(), src.ProtoReflect())
}

func merge(dst, src protoreflect.Message) {
	fields := src.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !set(src, fd) {
			continue
		}
		switch {
		case fd.IsList():
			l := dst.NewField(fd).List()
			sl := src.Get(fd).List()
			for j := 0; j < sl.Len(); j++ {
				l.Append(sl.Get(j))
			}
			dst.Set(fd, protoreflect.ValueOfList(l))
		case fd.IsMap():
			dst.Set(fd, src.Get(fd))
		case fd.Kind() == protoreflect.MessageKind && !isLeafMessage(fd):
			merge(dst.Mutable(fd).Message(), src.Get(fd).Message())
		case fd.Kind() == protoreflect.MessageKind:
			dst.Set(fd, protoreflect.ValueOfMessage(proto.Clone(src.Get(fd).Message().Interface()).ProtoReflect()))
		default:
			dst.Set(fd, src.Get(fd))
		}
	}
}

// Layer is one node's policy in an inheritance chain.
type Layer struct {
	// Source is the service path of the node.
	Source string
	// Policy is what the node sets; nil sets nothing.
	Policy *controllerv1.Policy
}

// Effective merges the defaults and the layers in order (root first) into the policy in
// effect, and lists each leaf field with the node it came from.
func Effective(layers []Layer) (*controllerv1.Policy, []*controllerv1.EffectiveValue) {
	eff := DefaultPolicy()
	sources := map[string]string{}
	for _, l := range layers {
		if l.Policy == nil {
			continue
		}
		Merge(eff, l.Policy)
		walk(l.Policy.ProtoReflect(), "", func(name string, _ protoreflect.Value, _ protoreflect.FieldDescriptor) {
			sources[name] = l.Source
		})
	}
	var values []*controllerv1.EffectiveValue
	walk(eff.ProtoReflect(), "", func(name string, v protoreflect.Value, fd protoreflect.FieldDescriptor) {
		src := sources[name]
		if src == "" {
			src = SourceDefault
		}
		values = append(values, &controllerv1.EffectiveValue{Field: name, Value: jsonValue(v, fd), Source: src})
	})
	return eff, values
}

// walk calls fn for every set leaf field of m, named by its dotted path.
func walk(m protoreflect.Message, prefix string, fn func(name string, v protoreflect.Value, fd protoreflect.FieldDescriptor)) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !set(m, fd) {
			continue
		}
		name := prefix + string(fd.Name())
		if fd.Kind() == protoreflect.MessageKind && !isLeafMessage(fd) && !fd.IsList() && !fd.IsMap() {
			walk(m.Get(fd).Message(), name+".", fn)
			continue
		}
		fn(name, m.Get(fd), fd)
	}
}

// jsonValue turns a leaf field's value into a JSON value: durations as Go duration
// strings, lists as lists.
func jsonValue(v protoreflect.Value, fd protoreflect.FieldDescriptor) *structpb.Value {
	switch {
	case fd.IsList():
		l := v.List()
		vals := make([]*structpb.Value, 0, l.Len())
		for i := 0; i < l.Len(); i++ {
			vals = append(vals, structpb.NewStringValue(fmt.Sprint(l.Get(i).Interface())))
		}
		return structpb.NewListValue(&structpb.ListValue{Values: vals})
	case isLeafMessage(fd):
		d := v.Message().Interface().(*durationpb.Duration)
		return structpb.NewStringValue(d.AsDuration().String())
	}
	switch x := v.Interface().(type) {
	case bool:
		return structpb.NewBoolValue(x)
	case string:
		return structpb.NewStringValue(x)
	case uint32:
		return structpb.NewNumberValue(float64(x))
	case int32:
		return structpb.NewNumberValue(float64(x))
	}
	return structpb.NewStringValue(fmt.Sprint(v.Interface()))
}

// FieldError is a validation failure of one field.
type FieldError struct {
	// Field is the dotted field name (strategy.batches).
	Field string
	// Reason says what is wrong.
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// step is one parsed entry of a ramp.
type step struct {
	count   int
	percent float64
	isPct   bool
}

func parseStep(s string) (step, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || math.IsNaN(f) || f <= 0 || f > 100 {
			return step{}, fmt.Errorf("%q: want a percentage above 0%% and at most 100%%", s)
		}
		return step{percent: f, isPct: true}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return step{}, fmt.Errorf("%q: want a count of at least 1 or a percentage (10%%)", s)
	}
	return step{count: n}, nil
}

// ValidateBatches checks a ramp: 1 to MaxBatches entries, counts and percentages each
// increasing, ending at 100%.
func ValidateBatches(field string, batches []string) error {
	if len(batches) == 0 {
		return fieldErr(field, "empty: want a ramp such as [1, \"10%%\", \"100%%\"]")
	}
	if len(batches) > MaxBatches {
		return fieldErr(field, "%d batches, at most %d", len(batches), MaxBatches)
	}
	lastCount, lastPct := 0, 0.0
	for i, b := range batches {
		s, err := parseStep(b)
		if err != nil {
			return fieldErr(fmt.Sprintf("%s[%d]", field, i), "%v", err)
		}
		if s.isPct {
			if s.percent <= lastPct {
				return fieldErr(fmt.Sprintf("%s[%d]", field, i), "%s does not grow past %g%%: batches are cumulative", b, lastPct)
			}
			lastPct = s.percent
		} else {
			if s.count <= lastCount {
				return fieldErr(fmt.Sprintf("%s[%d]", field, i), "%s does not grow past %d: batches are cumulative", b, lastCount)
			}
			lastCount = s.count
		}
	}
	if last := strings.TrimSpace(batches[len(batches)-1]); last != "100%" {
		return fieldErr(field, "the last batch is %q: the ramp must end at \"100%%\"", last)
	}
	return nil
}

// ParsePause reads a pause value: "none" or "" (0, false), "manual" (0, true), or a
// duration (d, false).
func ParsePause(s string) (d time.Duration, manual bool, err error) {
	switch s {
	case "", "none":
		return 0, false, nil
	case "manual":
		return 0, true, nil
	}
	d, err = time.ParseDuration(s)
	if err != nil || d <= 0 || d > MaxPause {
		return 0, false, fmt.Errorf("%q: want none, manual or a duration above 0 and at most %s (30s, 5m)", s, MaxPause)
	}
	return d, false, nil
}

// parseBudget reads max_failures.
func parseBudget(s string) (step, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || math.IsNaN(f) || f < 0 || f > 100 {
			return step{}, fmt.Errorf("%q: want a percentage from 0%% to 100%%", s)
		}
		return step{percent: f, isPct: true}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return step{}, fmt.Errorf("%q: want a count (0, 2) or a percentage of the targets (10%%)", s)
	}
	return step{count: n}, nil
}

// Budget is how many targets may fail out of total before the rollout stops: a count, or
// a percentage of total rounded down.
func Budget(maxFailures string, total int) int {
	s, err := parseBudget(maxFailures)
	if err != nil {
		return 0
	}
	if s.isPct {
		return int(math.Floor(s.percent*float64(total)/100 + 1e-9))
	}
	return s.count
}

func checkDuration(field string, d *durationpb.Duration, allowZero bool, limit time.Duration) error {
	if d == nil {
		return nil
	}
	if err := d.CheckValid(); err != nil {
		return fieldErr(field, "%v", err)
	}
	v := d.AsDuration()
	switch {
	case v < 0, v == 0 && !allowZero:
		return fieldErr(field, "%s: want a duration above 0", v)
	case v > limit:
		return fieldErr(field, "%s: at most %s", v, limit)
	}
	return nil
}

// Validate checks every field that is set in s (a request's or a node's partial
// strategy); prefix names the fields (strategy.).
func Validate(prefix string, s *controllerv1.Strategy) error {
	if s == nil {
		return nil
	}
	if len(s.GetBatches()) > 0 {
		if err := ValidateBatches(prefix+"batches", s.GetBatches()); err != nil {
			return err
		}
	}
	if s.MaxParallel != nil && s.GetMaxParallel() > MaxParallel {
		return fieldErr(prefix+"max_parallel", "%d: at most %d (0 means the whole batch)", s.GetMaxParallel(), MaxParallel)
	}
	if s.Pause != nil {
		if _, _, err := ParsePause(s.GetPause()); err != nil {
			return fieldErr(prefix+"pause", "%v", err)
		}
	}
	if s.MaxFailures != nil {
		if _, err := parseBudget(s.GetMaxFailures()); err != nil {
			return fieldErr(prefix+"max_failures", "%v", err)
		}
	}
	if hg := s.GetHealthGate(); hg != nil {
		if err := checkDuration(prefix+"health_gate.min_healthy_time", hg.GetMinHealthyTime(), true, MaxDeadline); err != nil {
			return err
		}
		if err := checkDuration(prefix+"health_gate.deadline", hg.GetDeadline(), false, MaxHealthDefault); err != nil {
			return err
		}
	}
	if err := checkDuration(prefix+"progress_deadline", s.GetProgressDeadline(), true, MaxDeadline); err != nil {
		return err
	}
	if err := checkDuration(prefix+"step_timeout", s.GetStepTimeout(), false, MaxStepTimeout); err != nil {
		return err
	}
	if s.InfraRetries != nil && s.GetInfraRetries() > MaxInfraRetries {
		return fieldErr(prefix+"infra_retries", "%d: at most %d", s.GetInfraRetries(), MaxInfraRetries)
	}
	return nil
}

// ValidatePolicy checks a node's policy.
func ValidatePolicy(p *controllerv1.Policy) error {
	if p == nil {
		return nil
	}
	if err := Validate("policy.strategy.", p.GetStrategy()); err != nil {
		return err
	}
	if h := p.GetHealth(); h != nil {
		if err := checkDuration("policy.health.interval", h.GetInterval(), false, time.Hour); err != nil {
			return err
		}
		if err := checkDuration("policy.health.timeout", h.GetTimeout(), false, time.Hour); err != nil {
			return err
		}
		if h.Rise != nil && (h.GetRise() < 1 || h.GetRise() > 100) {
			return fieldErr("policy.health.rise", "%d: want 1 to 100", h.GetRise())
		}
		if h.Fall != nil && (h.GetFall() < 1 || h.GetFall() > 100) {
			return fieldErr("policy.health.fall", "%d: want 1 to 100", h.GetFall())
		}
	}
	return checkDuration("policy.dns_ttl", p.GetDnsTtl(), true, 24*time.Hour)
}

// Plan turns a validated ramp into batches over total targets: entry i covers the targets
// up to its cumulative count (a percentage rounds up, so 10% of 5 is 1), and entries that
// add no target are dropped. total 0 gives no batch.
func Plan(batches []string, total int) ([]*controllerv1.Batch, error) {
	if err := ValidateBatches("batches", batches); err != nil {
		return nil, err
	}
	var out []*controllerv1.Batch
	prev := 0
	for _, b := range batches {
		s, _ := parseStep(b)
		end := s.count
		if s.isPct {
			end = int(math.Ceil(s.percent*float64(total)/100 - 1e-9))
		}
		end = min(max(end, prev), total)
		if end == prev {
			continue
		}
		out = append(out, &controllerv1.Batch{Index: int32(len(out)), Start: int32(prev), End: int32(end)})
		prev = end
	}
	if prev != total {
		return nil, errors.New("plan: the ramp does not cover every target")
	}
	return out, nil
}
