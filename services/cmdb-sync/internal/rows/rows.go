// Package rows turns CMDB records into inventory hosts: it maps the source's field names
// onto Berth's, parses and checks every field, and checks the rows against each other
// (duplicate ids or IPs, overlapping address pools). A bad row is rejected on its own,
// with the reason; the good rows are kept.
package rows

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/berthdev/berth/pkg/ippool"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/cmdb-sync/internal/source"
)

// Mapping names, for each of Berth's fields, the source's field holding it; an empty
// name means the field's own name (id, dc, rack, ip, cpu, memory, disk, labels,
// max_containers, ip_pool, state).
type Mapping struct {
	ID            string `yaml:"id"`
	DC            string `yaml:"dc"`
	Rack          string `yaml:"rack"`
	IP            string `yaml:"ip"`
	CPU           string `yaml:"cpu"`
	Memory        string `yaml:"memory"`
	Disk          string `yaml:"disk"`
	Labels        string `yaml:"labels"`
	MaxContainers string `yaml:"max_containers"`
	IPPool        string `yaml:"ip_pool"`
	State         string `yaml:"state"`
	// LabelPrefix makes every source field named <prefix><key> a label key=value; default
	// "label.".
	LabelPrefix string `yaml:"label_prefix"`
}

// Rejection reasons, the label of the rejected-rows metric.
const (
	ReasonInvalid         = "invalid"
	ReasonBadPool         = "bad_pool"
	ReasonDuplicateID     = "duplicate_id"
	ReasonDuplicateIP     = "duplicate_ip"
	ReasonOverlappingPool = "overlapping_pool"
)

// Rejection is a row that was not applied.
type Rejection struct {
	// Pos is where the row is in the source.
	Pos string
	// ID is the row's host id as given (it may be empty or invalid).
	ID string
	// Reason classifies the rejection (ReasonInvalid, ...).
	Reason string
	// Err says what is wrong, naming the field.
	Err error
}

// Options tune Parse.
type Options struct {
	Mapping Mapping
	// DefaultMaxContainers is the cap of a row that gives none.
	DefaultMaxContainers uint32
	// Source is written into each host's source field.
	Source string
}

// Result is what Parse keeps and rejects.
type Result struct {
	// Hosts are the good rows, in source order, with the CMDB's fields set (state,
	// liveness and the other fields owned by cmdb-sync are left zero).
	Hosts []*inventoryv1.Host
	// Rejected are the bad rows.
	Rejected []Rejection
	// Claimed holds every id a row gave, good or bad: a host whose row is bad is still in
	// the CMDB.
	Claimed map[string]bool
}

// Parse turns records into hosts. retained are hosts that are not in the CMDB any more
// but still hold allocations: their address pools are still in use, so rows overlapping
// them are rejected.
func Parse(recs []source.Record, opts Options, retained []*inventoryv1.Host) Result {
	res := Result{Claimed: map[string]bool{}}
	idAt := map[string]string{}
	ipAt := map[string]string{}
	type claim struct {
		pool ippool.Pool
		by   string
	}
	var pools []claim
	for _, h := range retained {
		if p, err := ippool.Parse(h.GetIpPools()); err == nil && !p.Empty() {
			pools = append(pools, claim{p, "host " + h.GetId() + " (left the CMDB, still holds allocations)"})
		}
	}
	for _, rec := range recs {
		id, _ := text(get(rec.Fields, opts.Mapping.ID, "id"))
		reject := func(reason string, err error) {
			res.Rejected = append(res.Rejected, Rejection{Pos: rec.Pos, ID: id, Reason: reason, Err: err})
		}
		if id != "" {
			if at, dup := idAt[id]; dup {
				reject(ReasonDuplicateID, fmt.Errorf("id %q is also at %s", id, at))
				continue
			}
			idAt[id] = rec.Pos
			res.Claimed[id] = true
		}
		h, pool, err := parseRecord(rec, opts)
		if err != nil {
			reason := ReasonInvalid
			if errors.Is(err, ippool.ErrBadPool) {
				reason = ReasonBadPool
			}
			reject(reason, err)
			continue
		}
		if h.GetIp() != "" {
			if at, dup := ipAt[h.GetIp()]; dup {
				reject(ReasonDuplicateIP, fmt.Errorf("ip %s is also the ip of %s", h.GetIp(), at))
				continue
			}
		}
		if !pool.Empty() {
			overlap := ""
			for _, c := range pools {
				if a, ok := pool.Overlap(c.pool); ok {
					overlap = fmt.Sprintf("ip_pool overlaps the pool of %s at %s", c.by, a)
					break
				}
			}
			if overlap != "" {
				reject(ReasonOverlappingPool, errors.New(overlap))
				continue
			}
			pools = append(pools, claim{pool, fmt.Sprintf("host %s (%s)", id, rec.Pos)})
		}
		if h.GetIp() != "" {
			ipAt[h.GetIp()] = fmt.Sprintf("host %s (%s)", id, rec.Pos)
		}
		res.Hosts = append(res.Hosts, h)
	}
	return res
}

// IDs returns the host ids the records give, good rows or bad.
func IDs(recs []source.Record, m Mapping) map[string]bool {
	ids := make(map[string]bool, len(recs))
	for _, rec := range recs {
		if id, _ := text(get(rec.Fields, m.ID, "id")); id != "" {
			ids[id] = true
		}
	}
	return ids
}

// get returns the field mapped to name (or name itself).
func get(f map[string]any, mapped, name string) any {
	if mapped != "" {
		return f[mapped]
	}
	return f[name]
}

// parseRecord checks every field of one record.
func parseRecord(rec source.Record, opts Options) (*inventoryv1.Host, ippool.Pool, error) {
	m := opts.Mapping
	f := rec.Fields
	if e, ok := f["$error"].(string); ok {
		return nil, ippool.Pool{}, errors.New(e)
	}
	fieldErr := func(field string, err error) error { return fmt.Errorf("%s: %w", field, err) }
	h := &inventoryv1.Host{Source: opts.Source}
	var err error
	if h.Id, err = required(get(f, m.ID, "id")); err != nil {
		return nil, ippool.Pool{}, fieldErr("id", err)
	}
	if err := subjects.Host(h.Id); err != nil {
		return nil, ippool.Pool{}, fieldErr("id", err)
	}
	if h.Dc, err = required(get(f, m.DC, "dc")); err != nil {
		return nil, ippool.Pool{}, fieldErr("dc", err)
	}
	if err := subjects.DC(h.Dc); err != nil {
		return nil, ippool.Pool{}, fieldErr("dc", err)
	}
	if h.Rack, err = optional(get(f, m.Rack, "rack")); err != nil {
		return nil, ippool.Pool{}, fieldErr("rack", err)
	}
	if h.Rack != "" && strings.ContainsAny(h.Rack, " \t/") {
		return nil, ippool.Pool{}, fieldErr("rack", fmt.Errorf("%q: no spaces or slashes", h.Rack))
	}
	ip, err := optional(get(f, m.IP, "ip"))
	if err != nil {
		return nil, ippool.Pool{}, fieldErr("ip", err)
	}
	if ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, ippool.Pool{}, fieldErr("ip", fmt.Errorf("%q is not an IP address", ip))
		}
		h.Ip = a.Unmap().String()
	}
	if h.CpuMillis, err = cpuMillis(get(f, m.CPU, "cpu")); err != nil {
		return nil, ippool.Pool{}, fieldErr("cpu", err)
	}
	if h.MemoryBytes, err = bytesOf(get(f, m.Memory, "memory"), true); err != nil {
		return nil, ippool.Pool{}, fieldErr("memory", err)
	}
	if h.DiskBytes, err = bytesOf(get(f, m.Disk, "disk"), false); err != nil {
		return nil, ippool.Pool{}, fieldErr("disk", err)
	}
	prefix := m.LabelPrefix
	if prefix == "" {
		prefix = "label."
	}
	if h.Labels, err = labels(get(f, m.Labels, "labels"), f, prefix); err != nil {
		return nil, ippool.Pool{}, fieldErr("labels", err)
	}
	mc, err := count(get(f, m.MaxContainers, "max_containers"))
	if err != nil {
		return nil, ippool.Pool{}, fieldErr("max_containers", err)
	}
	h.MaxContainers = mc
	if mc == 0 {
		h.MaxContainers = opts.DefaultMaxContainers
	}
	pv := get(f, m.IPPool, "ip_pool")
	if pv == nil && m.IPPool == "" {
		pv = f["ip_pools"]
	}
	entries, err := list(pv)
	if err != nil {
		return nil, ippool.Pool{}, fieldErr("ip_pool", err)
	}
	pool, err := ippool.Parse(entries)
	if err != nil {
		return nil, ippool.Pool{}, fieldErr("ip_pool", err)
	}
	h.IpPools = entries
	state, err := optional(get(f, m.State, "state"))
	if err != nil {
		return nil, ippool.Pool{}, fieldErr("state", err)
	}
	switch strings.ToLower(state) {
	case "", "ready", "active", "online", "up":
	case "draining", "maintenance", "drain":
		h.CmdbDraining = true
	default:
		return nil, ippool.Pool{}, fieldErr("state", fmt.Errorf("%q: want ready (active, online) or draining (maintenance)", state))
	}
	return h, pool, nil
}

// text renders a scalar as a string.
func text(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", nil
	case string:
		return strings.TrimSpace(x), nil
	case bool:
		return strconv.FormatBool(x), nil
	case int:
		return strconv.Itoa(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	}
	return "", fmt.Errorf("want a string, found %T", v)
}

func required(v any) (string, error) {
	s, err := text(v)
	if err == nil && s == "" {
		err = errors.New("missing")
	}
	return s, err
}

func optional(v any) (string, error) { return text(v) }

// number reads a number given as a number or a numeric string.
func number(v any) (float64, bool, error) {
	switch x := v.(type) {
	case nil:
		return 0, false, nil
	case int:
		return float64(x), true, nil
	case int64:
		return float64(x), true, nil
	case uint64:
		return float64(x), true, nil
	case float64:
		return x, true, nil
	case string:
		s := strings.TrimSpace(x)
		if s == "" {
			return 0, false, nil
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0, false, fmt.Errorf("%q is not a number", s)
		}
		return f, true, nil
	}
	return 0, false, fmt.Errorf("want a number, found %T", v)
}

// cpuMillis reads cores (16, 15.5, "16") or millicores ("16000m").
func cpuMillis(v any) (uint64, error) {
	if s, ok := v.(string); ok && strings.HasSuffix(strings.TrimSpace(s), "m") {
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(s), "m"), 10, 64)
		if err != nil || n == 0 {
			return 0, fmt.Errorf("%q: want millicores > 0 (16000m) or cores (16)", s)
		}
		return n, nil
	}
	f, ok, err := number(v)
	switch {
	case err != nil:
		return 0, err
	case !ok:
		return 0, errors.New("missing")
	case f <= 0 || f > 1<<20 || math.IsNaN(f):
		return 0, fmt.Errorf("%v cores: want more than 0", f)
	}
	return uint64(math.Round(f * 1000)), nil
}

var unitRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$`)

// bytesOf reads a size: a number of bytes, or a number with a unit (K, M, G, T with or
// without i/iB are powers of 1024; KB, MB, GB, TB powers of 1000; B bytes).
func bytesOf(v any, req bool) (uint64, error) {
	s, isStr := v.(string)
	if !isStr {
		f, ok, err := number(v)
		switch {
		case err != nil:
			return 0, err
		case !ok && req:
			return 0, errors.New("missing")
		case !ok:
			return 0, nil
		case f < 0 || f != math.Trunc(f) || f > 1<<62:
			return 0, fmt.Errorf("%v: want a whole number of bytes, or a size with a unit (64GiB)", f)
		case f == 0 && req:
			return 0, errors.New("0: want more than 0")
		}
		return uint64(f), nil
	}
	s = strings.TrimSpace(s)
	if s == "" {
		if req {
			return 0, errors.New("missing")
		}
		return 0, nil
	}
	m := unitRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q: want bytes or a size with a unit (64GiB, 512M, 1.5T)", s)
	}
	f, _ := strconv.ParseFloat(m[1], 64)
	mult := 0.0
	switch strings.ToLower(m[2]) {
	case "", "b":
		mult = 1
	case "k", "ki", "kib":
		mult = 1 << 10
	case "m", "mi", "mib":
		mult = 1 << 20
	case "g", "gi", "gib":
		mult = 1 << 30
	case "t", "ti", "tib":
		mult = 1 << 40
	case "kb":
		mult = 1e3
	case "mb":
		mult = 1e6
	case "gb":
		mult = 1e9
	case "tb":
		mult = 1e12
	default:
		return 0, fmt.Errorf("%q: unknown unit %q (B, K, M, G, T, KiB.., KB..)", s, m[2])
	}
	n := f * mult
	if n > 1<<62 || (req && n < 1) {
		return 0, fmt.Errorf("%q: out of range", s)
	}
	return uint64(n), nil
}

// count reads a whole number from 0 to 1024.
func count(v any) (uint32, error) {
	f, ok, err := number(v)
	switch {
	case err != nil:
		return 0, err
	case !ok:
		return 0, nil
	case f < 1 || f > 1024 || f != math.Trunc(f):
		return 0, fmt.Errorf("%v: want a whole number from 1 to 1024", f)
	}
	return uint32(f), nil
}

var labelKeyRE = regexp.MustCompile(`^[A-Za-z0-9_.\-/:]+$`)

// labels reads a map, or "k=v,k2=v2" (or ";"), plus every field named prefix+key.
func labels(v any, fields map[string]any, prefix string) (map[string]string, error) {
	out := map[string]string{}
	add := func(k string, val any) error {
		k = strings.TrimSpace(k)
		s, err := text(val)
		if err != nil {
			return fmt.Errorf("label %q: %w", k, err)
		}
		if !labelKeyRE.MatchString(k) {
			return fmt.Errorf("label key %q: letters, digits and _.-/: only", k)
		}
		if s != "" && !labelKeyRE.MatchString(s) {
			return fmt.Errorf("label %q value %q: letters, digits and _.-/: only", k, s)
		}
		if k == "dc" || k == "rack" || k == "id" {
			return fmt.Errorf("label key %q is reserved: constraints on %s match the host's own field", k, k)
		}
		out[k] = s
		return nil
	}
	switch x := v.(type) {
	case nil:
	case map[string]any:
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range x {
				if !yield(k) {
					return
				}
			}
		}) {
			if err := add(k, x[k]); err != nil {
				return nil, err
			}
		}
	case string:
		for part := range strings.FieldsFuncSeq(x, func(r rune) bool { return r == ',' || r == ';' }) {
			k, val, ok := strings.Cut(part, "=")
			if !ok {
				return nil, fmt.Errorf("%q: want key=value pairs separated by , or ;", part)
			}
			if err := add(k, strings.TrimSpace(val)); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("want a map or key=value pairs, found %T", v)
	}
	for k, val := range fields {
		if key, ok := strings.CutPrefix(k, prefix); ok && key != "" {
			if err := add(key, val); err != nil {
				return nil, err
			}
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// list reads a list of strings, or one string of entries separated by commas, spaces or
// semicolons.
func list(v any) ([]string, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case string:
		return strings.FieldsFunc(x, func(r rune) bool { return r == ',' || r == ';' || r == ' ' || r == '\t' }), nil
	case []any:
		var out []string
		for i, e := range x {
			s, err := text(e)
			if err != nil {
				return nil, fmt.Errorf("entry %d: %w", i+1, err)
			}
			if s != "" {
				out = append(out, s)
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a list or a comma-separated string, found %T", v)
}
