package dnsview

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

// MaxWeight is the largest weight a policy may give a version or an instance.
const MaxWeight = 1_000_000

// maxMinHealthy bounds TrafficPolicy.min_healthy.
const maxMinHealthy = 100_000

// ErrInvalidPolicy is wrapped by every *FieldError.
var ErrInvalidPolicy = errors.New("dnsview: invalid traffic policy")

// FieldError is a refused traffic policy: Field names what was wrong (in the policy's
// protojson names: version_weights["1.4.2"], panic_threshold), Reason says why.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("traffic policy %s: %s", e.Field, e.Reason) }

// Unwrap returns ErrInvalidPolicy.
func (e *FieldError) Unwrap() error { return ErrInvalidPolicy }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ValidatePolicy checks a traffic policy and returns a *FieldError naming the first bad
// field. knownDC reports whether a datacenter exists (from the inventory); nil accepts any
// well-formed name.
func ValidatePolicy(p *namesv1.TrafficPolicy, knownDC func(string) bool) error {
	if p == nil {
		return nil
	}
	switch p.GetMode() {
	case namesv1.AnswerMode_ANSWER_MODE_UNSPECIFIED, namesv1.AnswerMode_ANSWER_MODE_ALL, namesv1.AnswerMode_ANSWER_MODE_SINGLE:
		if p.GetLimit() != 0 {
			return fieldErr("limit", "%d is only allowed with mode ANSWER_MODE_LIMIT", p.GetLimit())
		}
	case namesv1.AnswerMode_ANSWER_MODE_LIMIT:
		if p.GetLimit() < 1 {
			return fieldErr("limit", "want at least 1 with mode ANSWER_MODE_LIMIT")
		}
	default:
		return fieldErr("mode", "unknown answer mode %d", p.GetMode())
	}
	if p.GetMinHealthy() > maxMinHealthy {
		return fieldErr("min_healthy", "%d is more than %d", p.GetMinHealthy(), maxMinHealthy)
	}
	for _, v := range sortedKeys(p.GetVersionWeights()) {
		w := p.GetVersionWeights()[v]
		f := fmt.Sprintf("version_weights[%q]", v)
		if v == "" {
			return fieldErr(f, "empty version")
		}
		if err := checkVersion(v); err != nil {
			return fieldErr(fmt.Sprintf("version_weights[%.40q]", v), "%v", err)
		}
		if w > MaxWeight {
			return fieldErr(f, "weight %d is more than %d", w, MaxWeight)
		}
	}
	if len(p.GetVersionWeights()) > 0 {
		var sum uint64
		for _, w := range p.GetVersionWeights() {
			sum += uint64(w)
		}
		if sum == 0 {
			return fieldErr("version_weights", "every weight is 0; at least one version must get traffic")
		}
	}
	for _, id := range sortedKeys(p.GetInstanceWeights()) {
		f := fmt.Sprintf("instance_weights[%q]", id)
		if err := CheckInstanceID(id); err != nil {
			return fieldErr(f, "%v", err)
		}
		if w := p.GetInstanceWeights()[id]; w > MaxWeight {
			return fieldErr(f, "weight %d is more than %d", w, MaxWeight)
		}
	}
	for _, from := range sortedKeys(p.GetDcOverrides()) {
		to := p.GetDcOverrides()[from]
		f := fmt.Sprintf("dc_overrides[%q]", from)
		if err := checkDC(from, knownDC); err != nil {
			return fieldErr(f, "client datacenter: %v", err)
		}
		if err := checkDC(to, knownDC); err != nil {
			return fieldErr(f, "target datacenter: %v", err)
		}
	}
	seen := map[string]string{}
	for i, id := range p.GetPin() {
		f := fmt.Sprintf("pin[%d]", i)
		if err := CheckInstanceID(id); err != nil {
			return fieldErr(f, "%v", err)
		}
		if seen[id] != "" {
			return fieldErr(f, "instance %q is listed twice", id)
		}
		seen[id] = "pin"
	}
	for i, id := range p.GetExclude() {
		f := fmt.Sprintf("exclude[%d]", i)
		if err := CheckInstanceID(id); err != nil {
			return fieldErr(f, "%v", err)
		}
		switch seen[id] {
		case "pin":
			return fieldErr(f, "instance %q is both pinned and excluded", id)
		case "exclude":
			return fieldErr(f, "instance %q is listed twice", id)
		}
		seen[id] = "exclude"
	}
	if t := p.GetPanicThreshold(); math.IsNaN(t) || t < 0 || t > 100 {
		return fieldErr("panic_threshold", "%v is outside 0 to 100 (percent)", t)
	}
	return nil
}

func checkDC(dc string, knownDC func(string) bool) error {
	if dc == "" {
		return errors.New("empty")
	}
	if err := checkLabel(dc); err != nil {
		return err
	}
	if knownDC != nil && !knownDC(dc) {
		return fmt.Errorf("unknown datacenter %q", dc)
	}
	return nil
}

// ParseWeights parses "1.4.1=90,1.4.2=10" (the CLI's --weights and --instance-weights)
// into a map. Keys must be unique and weights whole numbers from 0 to MaxWeight. field
// names the flag or field in errors.
func ParseWeights(field, s string) (map[string]uint32, error) {
	out := map[string]uint32{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return nil, fieldErr(field, "%q: want NAME=WEIGHT", part)
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n > MaxWeight {
			return nil, fieldErr(field, "%q: weight %q is not a whole number from 0 to %d", part, v, MaxWeight)
		}
		if _, dup := out[k]; dup {
			return nil, fieldErr(field, "%q is given twice", k)
		}
		out[k] = uint32(n)
	}
	if len(out) == 0 {
		return nil, fieldErr(field, "%q: no NAME=WEIGHT pairs", s)
	}
	return out, nil
}

// FormatWeights is the inverse of ParseWeights, keys in order.
func FormatWeights(m map[string]uint32) string {
	var b strings.Builder
	for i, k := range sortedKeys(m) {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%d", k, m[k])
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// maxVersionLen bounds a version, as the controller and the agent do.
const maxVersionLen = 128

// checkVersion checks a version the way the controller and the agent take one: letters,
// digits, '.', '_', '+' and '-', starting with a letter or digit, at most 128 bytes. A
// weight for anything else could never match an instance.
func checkVersion(v string) error {
	if len(v) > maxVersionLen {
		return fmt.Errorf("version of %d bytes, at most %d", len(v), maxVersionLen)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '+' && c != '-') {
			return fmt.Errorf("version %q: character %q: want letters, digits, '.', '_', '+' and '-', starting with a letter or digit", v, c)
		}
	}
	return nil
}
