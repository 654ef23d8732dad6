// Package dnsview turns a service's view (berth.names.v1.ServiceView) into answers, the
// same way in the name service and in an agent's local resolver: which instances a client
// gets, in which order, and why (Compile, Table.Select), under the service's traffic policy
// (ValidatePolicy, ParseWeights), with the panic threshold (UpdatePanic) and the client's
// datacenter found from its address (Locator). It also maps service paths to DNS names and
// back (ServiceName, InstanceName, SplitName).
//
// Everything here is pure: no I/O, no clock, no goroutines; randomness comes from the
// caller's *rand.Rand, so a seeded source gives the same answers every time. A Table is
// immutable once compiled and safe for concurrent use; a *rand.Rand is not, so each
// goroutine brings its own.
package dnsview

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// MaxLabel is the longest DNS label, in bytes.
const MaxLabel = 63

// maxName is the longest DNS name in presentation form, without the trailing dot.
const maxName = 253

// ErrBadName is returned for a service path, instance id or zone that cannot be a DNS name.
var ErrBadName = errors.New("dnsview: bad name")

// CanonicalZone returns zone in the form the other functions expect: lowercase, with a
// trailing dot ("ns.berth.internal."). Every label must be 1 to 63 letters, digits,
// hyphens or underscores.
func CanonicalZone(zone string) (string, error) {
	z := strings.ToLower(strings.TrimSuffix(zone, "."))
	if z == "" {
		return "", fmt.Errorf("%w: zone %q is empty", ErrBadName, zone)
	}
	if len(z) > maxName {
		return "", fmt.Errorf("%w: zone %q is longer than %d bytes", ErrBadName, zone, maxName)
	}
	for l := range strings.SplitSeq(z, ".") {
		if err := checkLabel(l); err != nil {
			return "", fmt.Errorf("zone %q: %w", zone, err)
		}
	}
	return z + ".", nil
}

// CheckServicePath checks that a service path (hotel/search) can be a DNS name: segments of
// 1 to 63 letters, digits, hyphens or underscores, no leading or trailing slash.
func CheckServicePath(service string) error {
	if service == "" {
		return fmt.Errorf("%w: empty service path", ErrBadName)
	}
	for s := range strings.SplitSeq(service, "/") {
		if err := checkLabel(s); err != nil {
			return fmt.Errorf("service path %q: %w", service, err)
		}
	}
	return nil
}

// CheckInstanceID checks that an instance id can be a DNS label.
func CheckInstanceID(id string) error {
	if err := checkLabel(id); err != nil {
		return fmt.Errorf("instance id: %w", err)
	}
	return nil
}

func checkLabel(l string) error {
	if l == "" {
		return fmt.Errorf("%w: empty label", ErrBadName)
	}
	if len(l) > MaxLabel {
		return fmt.Errorf("%w: label %q is longer than %d bytes", ErrBadName, l, MaxLabel)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("%w: label %q contains %q (want letters, digits, - or _)", ErrBadName, l, c)
		}
	}
	return nil
}

// ServiceName returns the DNS name of service in zone, lowercase with a trailing dot: the
// path's segments reversed, then the zone (hotel/search in ns.berth.internal is
// search.hotel.ns.berth.internal.).
func ServiceName(service, zone string) (string, error) {
	if err := CheckServicePath(service); err != nil {
		return "", err
	}
	z, err := CanonicalZone(zone)
	if err != nil {
		return "", err
	}
	segs := strings.Split(strings.ToLower(service), "/")
	slices.Reverse(segs)
	name := strings.Join(segs, ".") + "." + z
	if len(name)-1 > maxName {
		return "", fmt.Errorf("%w: %s is longer than %d bytes", ErrBadName, name, maxName)
	}
	return name, nil
}

// InstanceName returns the DNS name of one instance: <id>.<service name>.
func InstanceName(service, id, zone string) (string, error) {
	if err := CheckInstanceID(id); err != nil {
		return "", err
	}
	sn, err := ServiceName(service, zone)
	if err != nil {
		return "", err
	}
	name := strings.ToLower(id) + "." + sn
	if len(name)-1 > maxName {
		return "", fmt.Errorf("%w: %s is longer than %d bytes", ErrBadName, name, maxName)
	}
	return name, nil
}

// SplitName returns the labels of qname below zone (a canonical zone, see CanonicalZone),
// lowercase, in name order (search.hotel.ns.berth.internal. gives [search hotel]). ok is
// false when qname is not in zone; the apex gives no labels and ok.
func SplitName(qname, zone string) (labels []string, ok bool) {
	q := strings.ToLower(qname)
	if !strings.HasSuffix(q, ".") {
		q += "."
	}
	if q == zone {
		return nil, true
	}
	if len(q) <= len(zone) || !strings.HasSuffix(q, zone) || q[len(q)-len(zone)-1] != '.' {
		return nil, false
	}
	return strings.Split(q[:len(q)-len(zone)-1], "."), true
}

// ServicePath turns labels in name order ([search hotel]) into a service path
// (hotel/search).
func ServicePath(labels []string) string {
	var b strings.Builder
	for i := len(labels) - 1; i >= 0; i-- {
		b.WriteString(labels[i])
		if i > 0 {
			b.WriteByte('/')
		}
	}
	return b.String()
}
