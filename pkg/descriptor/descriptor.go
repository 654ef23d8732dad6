// Package descriptor parses and validates berth.yaml, the service descriptor at the root of
// every Berth package.
//
// The format is strict: an unknown or repeated field, a value of the wrong type and a value
// out of range are all errors that name the file and the line, for example
//
//	berth.yaml:7: unknown field "prot" (did you mean "port"?)
//	berth.yaml:3: port 70000 out of range 1..65535
//
// A descriptor:
//
//	service: hotel/search          # required: the service tree path, 1..8 segments of
//	                               # [a-z0-9-] (DNS labels: 1..63 characters, no hyphen at
//	                               # either end), separated by "/"
//	port: 8080                     # 1..65535; omit it for a service that listens on no
//	                               # port (no SRV record); an explicit 0 is an error
//	scripts:                       # paths inside the package: relative, no "..", cleaned
//	  start: bin/start.sh          # required
//	  stop: bin/stop.sh            # required
//	  health: bin/health.sh        # optional: without it an instance is healthy once
//	                               # start succeeds
//	  reload: bin/reload.sh        # optional: run after a template changes
//	health:                        # all optional; defaults shown
//	  interval: 5s                 # Go duration, at least 100ms
//	  timeout: 2s                  # Go duration, more than 0, at most interval
//	  rise: 2                      # consecutive passes to become healthy, at least 1
//	  fall: 3                      # consecutive failures to become unhealthy, at least 1
//	templates:
//	  - source: conf/upstream.tmpl       # required: a path inside the package
//	    destination: conf/upstream.conf  # required: a path inside the release directory;
//	                                     # destinations are unique
//	    services: [hotel/pricing]        # service paths whose instances the template reads
//	    keys: [hotel/search/flags.json]  # keys under /berth/config/ it reads
//	    wait: {min: 2s, max: 10s}        # debounce; max defaults to 4×min; none if absent
//	    check: nginx -t -c conf/x.conf   # optional: argv split on spaces, run without a
//	                                     # shell, so quotes and shell syntax are refused
//	tags: [canary, gpu]            # 1..64 printable characters, no spaces, unique
//	weight: 100                    # 1..1000, default 100
//
// Template destinations are relative to the release directory on purpose: a package may
// not write files elsewhere on the host. Software whose configuration lives elsewhere points
// at the rendered file in its release.
package descriptor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"
)

// ErrInvalid is wrapped by every error about a descriptor's content.
var ErrInvalid = errors.New("descriptor: invalid")

// Defaults and bounds.
const (
	DefaultInterval = 5 * time.Second
	DefaultTimeout  = 2 * time.Second
	DefaultRise     = 2
	DefaultFall     = 3
	DefaultWeight   = 100
	MinInterval     = 100 * time.Millisecond
	MaxWeight       = 1000
	MaxSegments     = 8
	MaxSize         = 1 << 20 // bytes of a berth.yaml
	maxTagLen       = 64
)

// Descriptor is a parsed berth.yaml with the defaults applied.
type Descriptor struct {
	Service   string // the service tree path, e.g. "hotel/search"
	Port      int    // 0 when the service listens on no port
	Scripts   Scripts
	Health    Health
	Templates []Template
	Tags      []string
	Weight    int

	file  string         // the file name errors carry
	lines map[string]int // the line of each field that was in the file
}

// Scripts are paths inside the package, cleaned; Health and Reload may be empty.
type Scripts struct {
	Start, Stop, Health, Reload string
}

// Health configures the health checks of an instance.
type Health struct {
	Interval time.Duration
	Timeout  time.Duration
	Rise     int
	Fall     int
}

// Template is a configuration file the agent renders into the release directory.
type Template struct {
	Source      string   // path inside the package
	Destination string   // path inside the release directory
	Services    []string // service paths whose instances it reads
	Keys        []string // keys under /berth/config/ it reads
	Wait        Wait
	Check       []string // argv of the check command, nil when none
}

// Wait debounces re-rendering: render once inputs are quiet for Min, and at the latest Max
// after the first change. The zero value renders at once.
type Wait struct {
	Min, Max time.Duration
}

// Error is one problem in a descriptor, at a line when it is known.
type Error struct {
	File  string // file name, "" for a Descriptor built in code
	Line  int    // 1-based, 0 when unknown
	Field string // dotted field path, e.g. "health.timeout"; "" for the whole file
	Msg   string // what is wrong, naming the field
}

// Error returns "file:line: msg", "file: msg" or "msg".
func (e *Error) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.File != "":
		return e.File + ": " + e.Msg
	}
	return e.Msg
}

// Unwrap returns ErrInvalid.
func (e *Error) Unwrap() error { return ErrInvalid }

// Errors is every problem found in a descriptor, ordered by line.
type Errors []*Error

// Error returns one problem per line.
func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap returns the problems, so errors.Is(err, ErrInvalid) and errors.As(err, **Error)
// work.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Load reads and parses the descriptor at path; errors name path.
func Load(path string) (*Descriptor, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load descriptor: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("load descriptor %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse parses data, the content of the file called name, applies the defaults and
// validates the result. The error, if any, is an Errors listing every problem found.
func Parse(name string, data []byte) (*Descriptor, error) {
	p := &parser{file: name, bad: make(map[string]bool)}
	d := &Descriptor{file: name, lines: make(map[string]int)}
	p.d = d
	if len(data) > MaxSize {
		p.errorf(0, "", "%d bytes, more than the limit of %d", len(data), MaxSize)
		return nil, p.errs
	}
	root, ok := p.document(data)
	if !ok {
		return nil, p.errs
	}
	p.top(root)
	d.applyDefaults()
	errs := append(p.errs, d.validate(p.bad)...)
	if len(errs) > 0 {
		sort.SliceStable(errs, func(i, j int) bool { return errs[i].Line < errs[j].Line })
		return nil, errs
	}
	return d, nil
}

// Validate checks every field, assuming the defaults were applied (Parse applies them;
// a Descriptor built in code must set them). The error, if any, is an Errors.
func (d *Descriptor) Validate() error {
	if errs := d.validate(nil); len(errs) > 0 {
		return errs
	}
	return nil
}

// CheckFiles checks that the scripts and template sources exist in the package fsys as
// regular files, and that the scripts are executable.
func (d *Descriptor) CheckFiles(fsys fs.FS) error {
	var errs Errors
	add := func(field, msg string, args ...any) {
		errs = append(errs, d.newError(field, fmt.Sprintf(msg, args...)))
	}
	check := func(field, name string, exec bool) {
		if name == "" {
			return
		}
		fi, err := fs.Stat(fsys, name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			add(field, "%s %q is not in the package", field, name)
		case err != nil:
			add(field, "%s %q: %v", field, name, err)
		case !fi.Mode().IsRegular():
			add(field, "%s %q is not a regular file", field, name)
		case exec && fi.Mode().Perm()&0o111 == 0:
			add(field, "%s %q is not executable", field, name)
		}
	}
	check("scripts.start", d.Scripts.Start, true)
	check("scripts.stop", d.Scripts.Stop, true)
	check("scripts.health", d.Scripts.Health, true)
	check("scripts.reload", d.Scripts.Reload, true)
	for i, t := range d.Templates {
		check(fmt.Sprintf("templates[%d].source", i), t.Source, false)
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

func (d *Descriptor) applyDefaults() {
	if d.Health.Interval == 0 && !d.has("health.interval") {
		d.Health.Interval = DefaultInterval
	}
	if d.Health.Timeout == 0 && !d.has("health.timeout") {
		d.Health.Timeout = DefaultTimeout
	}
	if d.Health.Rise == 0 && !d.has("health.rise") {
		d.Health.Rise = DefaultRise
	}
	if d.Health.Fall == 0 && !d.has("health.fall") {
		d.Health.Fall = DefaultFall
	}
	if d.Weight == 0 && !d.has("weight") {
		d.Weight = DefaultWeight
	}
	for i := range d.Templates {
		w := &d.Templates[i].Wait
		if w.Max == 0 && !d.has(fmt.Sprintf("templates[%d].wait.max", i)) {
			w.Max = 4 * w.Min
		}
	}
}

func (d *Descriptor) has(field string) bool {
	_, ok := d.lines[field]
	return ok
}

// newError makes an Error for field, at its line or the nearest enclosing field's.
func (d *Descriptor) newError(field, msg string) *Error {
	e := &Error{File: d.file, Field: field, Msg: msg}
	for f := field; f != "" && d.lines != nil; f = parentField(f) {
		if l, ok := d.lines[f]; ok {
			e.Line = l
			break
		}
	}
	return e
}

// parentField returns "a.b" for "a.b.c" and "a" for "a[3]".
func parentField(f string) string {
	i := strings.LastIndexAny(f, ".[")
	if i < 0 {
		return ""
	}
	return f[:i]
}

// validate returns every problem, skipping fields in bad (already reported while parsing).
func (d *Descriptor) validate(bad map[string]bool) Errors {
	var errs Errors
	add := func(field, format string, args ...any) {
		for f := field; f != ""; f = parentField(f) {
			if bad[f] {
				return
			}
		}
		errs = append(errs, d.newError(field, fmt.Sprintf(format, args...)))
	}

	if d.Service == "" {
		add("service", "missing field \"service\"")
	} else if msg := checkServicePath(d.Service); msg != "" {
		add("service", "service %q: %s", d.Service, msg)
	}
	if d.Port != 0 || d.has("port") {
		if d.Port < 1 || d.Port > 65535 {
			hint := ""
			if d.Port == 0 {
				hint = " (omit port for a service that listens on none)"
			}
			add("port", "port %d out of range 1..65535%s", d.Port, hint)
		}
	}

	scripts := []struct {
		field, value string
		required     bool
	}{
		{"scripts.start", d.Scripts.Start, true},
		{"scripts.stop", d.Scripts.Stop, true},
		{"scripts.health", d.Scripts.Health, false},
		{"scripts.reload", d.Scripts.Reload, false},
	}
	for _, s := range scripts {
		switch {
		case s.value == "" && s.required && !d.has(s.field):
			add(s.field, "missing field %q", s.field)
		case s.value == "" && d.has(s.field):
			add(s.field, "%s is empty", s.field)
		case s.value != "":
			if msg := checkRelPath(s.value); msg != "" {
				add(s.field, "%s %q: %s", s.field, s.value, msg)
			}
		}
	}

	h := d.Health
	if h.Interval < MinInterval {
		add("health.interval", "health.interval %v must be at least %v", h.Interval, MinInterval)
	}
	switch {
	case h.Timeout <= 0:
		add("health.timeout", "health.timeout %v must be more than 0", h.Timeout)
	case h.Timeout > h.Interval && h.Interval >= MinInterval:
		add("health.timeout", "health.timeout %v must not exceed health.interval %v", h.Timeout, h.Interval)
	}
	if h.Rise < 1 {
		add("health.rise", "health.rise %d must be at least 1", h.Rise)
	}
	if h.Fall < 1 {
		add("health.fall", "health.fall %d must be at least 1", h.Fall)
	}

	dests := make(map[string]int)
	for i, t := range d.Templates {
		f := fmt.Sprintf("templates[%d]", i)
		if t.Source == "" {
			add(f+".source", "missing field %q", f+".source")
		} else if msg := checkRelPath(t.Source); msg != "" {
			add(f+".source", "%s.source %q: %s", f, t.Source, msg)
		}
		if t.Destination == "" {
			add(f+".destination", "missing field %q", f+".destination")
		} else if msg := checkRelPath(t.Destination); msg != "" {
			add(f+".destination", "%s.destination %q: %s", f, t.Destination, msg)
		} else if j, dup := dests[t.Destination]; dup {
			add(f+".destination", "%s.destination %q is also the destination of templates[%d]", f, t.Destination, j)
		} else {
			dests[t.Destination] = i
		}
		seen := make(map[string]bool)
		for j, s := range t.Services {
			sf := fmt.Sprintf("%s.services[%d]", f, j)
			if msg := checkServicePath(s); msg != "" {
				add(sf, "%s %q: %s", sf, s, msg)
			} else if seen[s] {
				add(sf, "%s %q is listed twice", sf, s)
			}
			seen[s] = true
		}
		seen = make(map[string]bool)
		for j, k := range t.Keys {
			kf := fmt.Sprintf("%s.keys[%d]", f, j)
			if msg := checkKey(k); msg != "" {
				add(kf, "%s %q: %s", kf, k, msg)
			} else if seen[k] {
				add(kf, "%s %q is listed twice", kf, k)
			}
			seen[k] = true
		}
		if t.Wait.Min < 0 {
			add(f+".wait.min", "%s.wait.min %v must not be negative", f, t.Wait.Min)
		} else if t.Wait.Max < t.Wait.Min {
			add(f+".wait.max", "%s.wait.max %v must not be less than %s.wait.min %v", f, t.Wait.Max, f, t.Wait.Min)
		}
		if t.Check != nil {
			if msg := checkArgv(t.Check); msg != "" {
				add(f+".check", "%s: %s", f+".check", msg)
			}
		}
	}

	seen := make(map[string]bool)
	for i, tag := range d.Tags {
		f := fmt.Sprintf("tags[%d]", i)
		if msg := checkTag(tag); msg != "" {
			add(f, "%s %q: %s", f, tag, msg)
		} else if seen[tag] {
			add(f, "%s %q is listed twice", f, tag)
		}
		seen[tag] = true
	}
	if d.Weight < 1 || d.Weight > MaxWeight {
		add("weight", "weight %d out of range 1..%d", d.Weight, MaxWeight)
	}
	return errs
}

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// checkServicePath returns what is wrong with a service tree path, or "".
func checkServicePath(s string) string {
	segs := strings.Split(s, "/")
	if len(segs) > MaxSegments {
		return fmt.Sprintf("%d segments, at most %d", len(segs), MaxSegments)
	}
	for _, seg := range segs {
		if seg == "" {
			return "empty segment (want segments separated by single slashes, none leading or trailing)"
		}
		if !labelRE.MatchString(seg) {
			return fmt.Sprintf("segment %q must be 1..63 lowercase letters, digits and hyphens, with no hyphen at either end", seg)
		}
	}
	return ""
}

// checkRelPath returns what is wrong with a path inside the package or release, or "".
func checkRelPath(p string) string {
	switch {
	case strings.ContainsRune(p, 0):
		return "NUL byte in path"
	case strings.ContainsRune(p, '\\'):
		return "backslash in path (use /)"
	case strings.HasPrefix(p, "/"):
		return "absolute path not allowed (paths are inside the package)"
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return `".." not allowed (paths are inside the package)`
		}
	}
	if path.Clean(p) == "." {
		return "names the package root, not a file"
	}
	return ""
}

var keySegRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// checkKey returns what is wrong with a configuration key, or "".
func checkKey(k string) string {
	if strings.HasPrefix(k, "/") {
		return "absolute key (write it relative to /berth/config/, e.g. hotel/search/flags.json)"
	}
	for _, seg := range strings.Split(k, "/") {
		switch {
		case seg == "":
			return "empty segment"
		case seg == "." || seg == "..":
			return fmt.Sprintf("segment %q not allowed", seg)
		case !keySegRE.MatchString(seg):
			return fmt.Sprintf("segment %q must be letters, digits, '.', '_' and '-'", seg)
		}
	}
	return ""
}

func checkTag(t string) string {
	switch {
	case t == "":
		return "empty tag"
	case len(t) > maxTagLen:
		return fmt.Sprintf("longer than %d bytes", maxTagLen)
	case strings.IndexFunc(t, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		return "spaces and control characters not allowed"
	}
	return ""
}

var shellOps = map[string]bool{"|": true, "||": true, "&&": true, "&": true, ";": true, ">": true, ">>": true, "<": true, "2>&1": true}

// checkArgv returns what is wrong with a check command, or "".
func checkArgv(argv []string) string {
	if len(argv) == 0 {
		return "empty command"
	}
	for _, a := range argv {
		switch {
		case strings.ContainsAny(a, "\"'\\`"):
			return fmt.Sprintf("quotes and escapes are not supported in %q: the command is split on spaces and run without a shell", a)
		case shellOps[a] || strings.Contains(a, "$("):
			return fmt.Sprintf("%q is shell syntax: the command is split on spaces and run without a shell", a)
		case strings.ContainsRune(a, 0) || strings.IndexFunc(a, unicode.IsControl) >= 0:
			return "control characters not allowed"
		}
	}
	return ""
}

// parser walks the YAML node tree into a Descriptor.
type parser struct {
	file string
	d    *Descriptor
	errs Errors
	bad  map[string]bool // fields with an error already, not validated again
}

func (p *parser) errorf(line int, field, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
	if field != "" {
		p.bad[field] = true
	}
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// document decodes data into the root mapping node.
func (p *parser) document(data []byte) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			p.errorf(0, "", "empty descriptor (want at least service and scripts)")
			return nil, false
		}
		p.yamlError(err)
		return nil, false
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		if err != nil {
			p.yamlError(err)
		} else {
			p.errorf(extra.Line, "", "a second YAML document: a descriptor is one document")
		}
		return nil, false
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		p.errorf(doc.Line, "", "empty descriptor (want at least service and scripts)")
		return nil, false
	}
	root := doc.Content[0]
	if ok := p.noAliases(root); !ok {
		return nil, false
	}
	if root.Kind != yaml.MappingNode {
		p.errorf(root.Line, "", "the descriptor must be a mapping of fields, got %s", describe(root))
		return nil, false
	}
	return root, true
}

func (p *parser) yamlError(err error) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		p.errorf(line, "", "%s", m[2])
		return
	}
	p.errorf(0, "", "%s", strings.TrimPrefix(msg, "yaml: "))
}

// noAliases refuses aliases anywhere: they make a strict format ambiguous and allow
// exponential expansion.
func (p *parser) noAliases(n *yaml.Node) bool {
	if n.Kind == yaml.AliasNode {
		p.errorf(n.Line, "", "YAML aliases (*%s) are not supported", n.Value)
		return false
	}
	for _, c := range n.Content {
		if !p.noAliases(c) {
			return false
		}
	}
	return true
}

// describe names a node's type for error messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!int":
			return "the integer " + n.Value
		case "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		case "!!str":
			return strconv.Quote(n.Value)
		}
		return fmt.Sprintf("%s %q", n.ShortTag(), n.Value)
	}
	return "an alias"
}

// mapping calls set for each field of the mapping n (at field path prefix), refusing
// unknown and repeated fields.
func (p *parser) mapping(n *yaml.Node, prefix string, known []string, set func(key string, field string, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n.Line, prefix, "%s must be a mapping, got %s", prefix, describe(n))
		return
	}
	seen := make(map[string]int)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!null" {
			p.errorf(k.Line, prefix, "field names must be plain strings, got %s", describe(k))
			continue
		}
		field := k.Value
		if prefix != "" {
			field = prefix + "." + k.Value
		}
		if first, dup := seen[k.Value]; dup {
			p.errorf(k.Line, field, "duplicate field %q (first at line %d)", field, first)
			continue
		}
		seen[k.Value] = k.Line
		if !contains(known, k.Value) {
			msg := fmt.Sprintf("unknown field %q", k.Value)
			if prefix != "" {
				msg += " in " + prefix
			}
			if s := suggest(k.Value, known); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			p.errorf(k.Line, "", "%s", msg)
			continue
		}
		p.d.lines[field] = k.Line
		set(k.Value, field, v)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// suggest returns the known name closest to s, if it is close.
func suggest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(s), k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (p *parser) top(root *yaml.Node) {
	known := []string{"service", "port", "scripts", "health", "templates", "tags", "weight"}
	p.mapping(root, "", known, func(key, field string, v *yaml.Node) {
		d := p.d
		switch key {
		case "service":
			d.Service, _ = p.str(v, field)
		case "port":
			d.Port, _ = p.int(v, field)
		case "weight":
			d.Weight, _ = p.int(v, field)
		case "tags":
			d.Tags = p.strList(v, field)
		case "scripts":
			p.mapping(v, field, []string{"start", "stop", "health", "reload"}, func(key, field string, v *yaml.Node) {
				s, _ := p.str(v, field)
				s = cleanRel(s)
				switch key {
				case "start":
					d.Scripts.Start = s
				case "stop":
					d.Scripts.Stop = s
				case "health":
					d.Scripts.Health = s
				case "reload":
					d.Scripts.Reload = s
				}
			})
		case "health":
			p.mapping(v, field, []string{"interval", "timeout", "rise", "fall"}, func(key, field string, v *yaml.Node) {
				switch key {
				case "interval":
					d.Health.Interval, _ = p.duration(v, field)
				case "timeout":
					d.Health.Timeout, _ = p.duration(v, field)
				case "rise":
					d.Health.Rise, _ = p.int(v, field)
				case "fall":
					d.Health.Fall, _ = p.int(v, field)
				}
			})
		case "templates":
			if v.Kind != yaml.SequenceNode {
				p.errorf(v.Line, field, "templates must be a list, got %s", describe(v))
				return
			}
			d.Templates = make([]Template, len(v.Content))
			for i, item := range v.Content {
				f := fmt.Sprintf("templates[%d]", i)
				p.d.lines[f] = item.Line
				p.template(item, f, &d.Templates[i])
			}
		}
	})
}

func (p *parser) template(n *yaml.Node, prefix string, t *Template) {
	known := []string{"source", "destination", "services", "keys", "wait", "check"}
	p.mapping(n, prefix, known, func(key, field string, v *yaml.Node) {
		switch key {
		case "source":
			s, _ := p.str(v, field)
			t.Source = cleanRel(s)
		case "destination":
			s, _ := p.str(v, field)
			t.Destination = cleanRel(s)
		case "services":
			t.Services = p.strList(v, field)
		case "keys":
			t.Keys = p.strList(v, field)
		case "wait":
			p.mapping(v, field, []string{"min", "max"}, func(key, field string, v *yaml.Node) {
				d, _ := p.duration(v, field)
				if key == "min" {
					t.Wait.Min = d
				} else {
					t.Wait.Max = d
				}
			})
		case "check":
			if s, ok := p.str(v, field); ok {
				t.Check = strings.Fields(s)
				if t.Check == nil {
					t.Check = []string{}
				}
			}
		}
	})
}

// cleanRel cleans a relative path that checkRelPath will accept; others are kept as they
// are so that the error shows them.
func cleanRel(s string) string {
	if s == "" || checkRelPath(s) != "" {
		return s
	}
	return path.Clean(s)
}

// str reads a scalar as text. Numbers and booleans are taken as written ("tags: [2024]").
func (p *parser) str(n *yaml.Node, field string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		p.errorf(n.Line, field, "%s must be a string, got %s", field, describe(n))
		return "", false
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return n.Value, true
	case "!!null":
		p.errorf(n.Line, field, "%s has no value", field)
	default:
		p.errorf(n.Line, field, "%s must be a string, got %s", field, describe(n))
	}
	return "", false
}

func (p *parser) int(n *yaml.Node, field string) (int, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
			p.errorf(n.Line, field, "%s has no value", field)
		} else {
			p.errorf(n.Line, field, "%s must be an integer, got %s", field, describe(n))
		}
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil || v < -1<<31 || v > 1<<31-1 {
		p.errorf(n.Line, field, "%s %s is out of range", field, n.Value)
		return 0, false
	}
	return int(v), true
}

func (p *parser) duration(n *yaml.Node, field string) (time.Duration, bool) {
	s, ok := p.str(n, field)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil || n.ShortTag() != "!!str" {
		p.errorf(n.Line, field, "%s must be a duration such as \"5s\" or \"500ms\", got %s", field, describe(n))
		return 0, false
	}
	return d, true
}

func (p *parser) strList(n *yaml.Node, field string) []string {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n.Line, field, "%s must be a list, got %s", field, describe(n))
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, item := range n.Content {
		f := fmt.Sprintf("%s[%d]", field, i)
		p.d.lines[f] = item.Line
		s, _ := p.str(item, f)
		out = append(out, s)
	}
	return out
}
