// Package tmpl renders configuration templates on the agent (DESIGN §7, confd-style): Go
// text/template with an allow-listed function set, fed by the name service's views and the
// /berth/config/ keys the host follows, re-rendered when an input changes, debounced by
// `wait`, written atomically with the previous file kept as <destination>.bak, checked
// before they replace anything, and followed by the app's reload script.
//
// The functions a template may call, besides text/template's builtins (and, or, not, len,
// index, slice, print, printf, println, eq, ne, lt, le, gt, ge, html, js, urlquery, call):
//
//	service "hotel/search"   the service's healthy, active instances (policy exclusions
//	                         applied; in panic, the last known good set), sorted by id:
//	                         .ID .Service .Host .IP .Port .DC .Version .Tags .Weight .Address
//	key "hotel/flags.json"   the value of /berth/config/hotel/flags.json (an error when the
//	                         key does not exist)
//	keyOr "k" "default"      the value, or the default when the key does not exist
//	join SEP LIST            strings.Join(LIST, SEP)
//	split SEP S              strings.Split(S, SEP)
//	lower S, upper S, trim S
//	trimPrefix P S, trimSuffix X S, replace OLD NEW S
//	contains SUB S, hasPrefix P S, hasSuffix X S
//	sortStrings LIST         a sorted copy
//	sortBy FIELD INSTANCES   a copy sorted by id, ip, port, dc, version, host or weight
//	toJSON V                 V as JSON
//
// Nothing reads files, the environment, or runs commands. The arguments of service, key
// and keyOr must be quoted strings in the template, so that every input is known before the
// first render: a template is refused when it calls another function, names an input with
// anything but a literal, or does not parse, with an error naming the file and line.
//
// The dot is {{.Host}} and {{.DC}}: this host's id and datacenter.
package tmpl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/berthdev/berth/pkg/dnsview"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
)

// MaxOutput bounds a rendered file.
const MaxOutput = 16 << 20

// ErrInvalid is wrapped by every error about a template's text.
var ErrInvalid = errors.New("tmpl: invalid template")

// Instance is one instance as templates see it.
type Instance struct {
	ID, Service, Host, IP string
	Port                  int
	DC, Version           string
	Tags                  []string
	Weight                int
}

// Address is IP:Port (brackets around an IPv6 address), or the IP without a port.
func (i Instance) Address() string {
	if i.Port == 0 {
		return i.IP
	}
	return net.JoinHostPort(i.IP, strconv.Itoa(i.Port))
}

// Data is the template's dot.
type Data struct {
	Host, DC string
}

// Template is a parsed template. Render may be called from one goroutine at a time.
type Template struct {
	name     string
	t        *template.Template
	services []string
	keys     []string

	// cur is the input of the render in progress, read by the functions.
	cur *renderState
}

// renderState is one render's inputs and what the functions saw.
type renderState struct {
	in   Inputs
	used map[string]int
}

// Inputs are what a render reads.
type Inputs struct {
	// Views are the services' views (nil: none known).
	Views map[string]*namesv1.ServiceView
	// Keys are the config keys' values; a missing entry is a key that does not exist.
	Keys map[string][]byte
}

// Result says what a render read.
type Result struct {
	// Counts are the number of instances each service call returned.
	Counts map[string]int
	// Empty are the services for which service returned no instance, sorted.
	Empty []string
}

// Parse parses src, the template called name (its path, for errors), and finds its inputs.
func Parse(name string, src []byte) (*Template, error) {
	tp := &Template{name: name}
	t := template.New(name).Option("missingkey=error").Funcs(tp.funcs())
	if _, err := t.Parse(string(src)); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, strings.TrimPrefix(err.Error(), "template: "))
	}
	tp.t = t
	services, keys := map[string]bool{}, map[string]bool{}
	for _, sub := range t.Templates() {
		if sub.Tree == nil || sub.Tree.Root == nil {
			continue
		}
		if err := walk(sub.Tree, sub.Tree.Root, services, keys); err != nil {
			return nil, err
		}
	}
	for s := range services {
		if err := dnsview.CheckServicePath(s); err != nil {
			return nil, fmt.Errorf("%w: %s: service %q: %v", ErrInvalid, name, s, err)
		}
		tp.services = append(tp.services, s)
	}
	for k := range keys {
		tp.keys = append(tp.keys, k)
	}
	sort.Strings(tp.services)
	sort.Strings(tp.keys)
	return tp, nil
}

// Name is the template's name.
func (tp *Template) Name() string { return tp.name }

// Services are the services the template reads, sorted.
func (tp *Template) Services() []string { return tp.services }

// Keys are the config keys the template reads, sorted.
func (tp *Template) Keys() []string { return tp.keys }

// walk collects the literal arguments of service, key and keyOr, refusing any other form.
func walk(tree *parse.Tree, n parse.Node, services, keys map[string]bool) error {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := walk(tree, c, services, keys); err != nil {
				return err
			}
		}
	case *parse.ActionNode:
		return walk(tree, n.Pipe, services, keys)
	case *parse.IfNode:
		return walkBranch(tree, &n.BranchNode, services, keys)
	case *parse.RangeNode:
		return walkBranch(tree, &n.BranchNode, services, keys)
	case *parse.WithNode:
		return walkBranch(tree, &n.BranchNode, services, keys)
	case *parse.TemplateNode:
		return walk(tree, n.Pipe, services, keys)
	case *parse.PipeNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Cmds {
			if err := walk(tree, c, services, keys); err != nil {
				return err
			}
		}
	case *parse.ChainNode:
		return walk(tree, n.Node, services, keys)
	case *parse.CommandNode:
		if id, ok := n.Args[0].(*parse.IdentifierNode); ok {
			switch id.Ident {
			case "service", "key", "keyOr":
				want := 2
				if id.Ident == "keyOr" {
					want = 3
				}
				var lit *parse.StringNode
				if len(n.Args) == want {
					lit, _ = n.Args[1].(*parse.StringNode)
				}
				if lit == nil {
					loc, _ := tree.ErrorContext(n)
					return fmt.Errorf("%w: %s: %s takes a quoted %s (inputs must be known before rendering): %s", ErrInvalid, loc, id.Ident,
						map[string]string{"service": "service path", "key": "key", "keyOr": "key and a default"}[id.Ident], n)
				}
				if id.Ident == "service" {
					services[lit.Text] = true
				} else {
					keys[lit.Text] = true
				}
			}
		}
		for _, a := range n.Args {
			if err := walk(tree, a, services, keys); err != nil {
				return err
			}
		}
	}
	return nil
}

func walkBranch(tree *parse.Tree, b *parse.BranchNode, services, keys map[string]bool) error {
	if err := walk(tree, b.Pipe, services, keys); err != nil {
		return err
	}
	if err := walk(tree, b.List, services, keys); err != nil {
		return err
	}
	return walk(tree, b.ElseList, services, keys)
}

// Render executes the template on in. The error names the template and line of a failed
// execution (a missing key, an output over MaxOutput).
func (tp *Template) Render(in Inputs, data Data) ([]byte, Result, error) {
	st := &renderState{in: in, used: map[string]int{}}
	tp.cur = st
	defer func() { tp.cur = nil }()
	var buf bytes.Buffer
	err := tp.t.Execute(&limitWriter{w: &buf, n: MaxOutput}, data)
	res := Result{Counts: st.used}
	for s, n := range st.used {
		if n == 0 {
			res.Empty = append(res.Empty, s)
		}
	}
	sort.Strings(res.Empty)
	if err != nil {
		return nil, res, fmt.Errorf("render %s: %s", tp.name, strings.TrimPrefix(err.Error(), "template: "))
	}
	return buf.Bytes(), res, nil
}

type limitWriter struct {
	w *bytes.Buffer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.w.Len()+len(p) > l.n {
		return 0, fmt.Errorf("output larger than %d bytes", l.n)
	}
	return l.w.Write(p)
}

// funcs is the allow-list. service, key and keyOr read tp.cur.
func (tp *Template) funcs() template.FuncMap {
	return template.FuncMap{
		"service": func(path string) ([]Instance, error) {
			st := tp.cur
			if st == nil {
				return nil, errors.New("service called outside a render")
			}
			out := Selectable(st.in.Views[path])
			st.used[path] = len(out)
			return out, nil
		},
		"key": func(k string) (string, error) {
			st := tp.cur
			if st == nil {
				return "", errors.New("key called outside a render")
			}
			v, ok := st.in.Keys[k]
			if !ok {
				return "", fmt.Errorf("config key %s does not exist (use keyOr for a default)", k)
			}
			return string(v), nil
		},
		"keyOr": func(k, def string) (string, error) {
			st := tp.cur
			if st == nil {
				return "", errors.New("keyOr called outside a render")
			}
			if v, ok := st.in.Keys[k]; ok {
				return string(v), nil
			}
			return def, nil
		},
		"join":        func(sep string, list []string) string { return strings.Join(list, sep) },
		"split":       func(sep, s string) []string { return strings.Split(s, sep) },
		"lower":       strings.ToLower,
		"upper":       strings.ToUpper,
		"trim":        strings.TrimSpace,
		"trimPrefix":  func(p, s string) string { return strings.TrimPrefix(s, p) },
		"trimSuffix":  func(x, s string) string { return strings.TrimSuffix(s, x) },
		"replace":     func(old, repl, s string) string { return strings.ReplaceAll(s, old, repl) },
		"contains":    func(sub, s string) bool { return strings.Contains(s, sub) },
		"hasPrefix":   func(p, s string) bool { return strings.HasPrefix(s, p) },
		"hasSuffix":   func(x, s string) bool { return strings.HasSuffix(s, x) },
		"sortStrings": func(list []string) []string { out := slices.Clone(list); sort.Strings(out); return out },
		"sortBy":      sortBy,
		"toJSON": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
	}
}

// sortBy returns a copy of list sorted by field (then by id).
func sortBy(field string, list []Instance) ([]Instance, error) {
	var key func(a, b Instance) int
	switch field {
	case "id":
		key = func(a, b Instance) int { return 0 }
	case "ip":
		key = func(a, b Instance) int { return strings.Compare(a.IP, b.IP) }
	case "port":
		key = func(a, b Instance) int { return a.Port - b.Port }
	case "dc":
		key = func(a, b Instance) int { return strings.Compare(a.DC, b.DC) }
	case "version":
		key = func(a, b Instance) int { return strings.Compare(a.Version, b.Version) }
	case "host":
		key = func(a, b Instance) int { return strings.Compare(a.Host, b.Host) }
	case "weight":
		key = func(a, b Instance) int { return b.Weight - a.Weight }
	default:
		return nil, fmt.Errorf("sortBy %q: want id, ip, port, dc, version, host or weight", field)
	}
	out := slices.Clone(list)
	slices.SortStableFunc(out, func(a, b Instance) int {
		if c := key(a, b); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Selectable returns the instances of a view a template gets: healthy and active
// (dnsview.Selectable) with a valid address, less the policy's exclusions; in panic, the
// last known good set among the registered instances. Weights are the policy's instance
// weight when it sets one, else the instance's, else 100; instances the policy weighs 0
// are left out unless all are. Sorted by id.
func Selectable(v *namesv1.ServiceView) []Instance {
	if v == nil {
		return nil
	}
	excluded := map[string]bool{}
	for _, id := range v.GetPolicy().GetExclude() {
		excluded[strings.ToLower(id)] = true
	}
	lastGood := map[string]bool{}
	for _, id := range v.GetLastGood() {
		lastGood[id] = true
	}
	out := []Instance{}
	for _, in := range v.GetInstances() {
		if excluded[strings.ToLower(in.GetId())] || net.ParseIP(in.GetIp()) == nil {
			continue
		}
		if v.GetPanic() {
			if !lastGood[in.GetId()] {
				continue
			}
		} else if !dnsview.Selectable(in) {
			continue
		}
		w := int(in.GetWeight())
		if w == 0 {
			w = dnsview.DefaultWeight
		}
		if pw, ok := v.GetPolicy().GetInstanceWeights()[in.GetId()]; ok {
			w = int(pw)
		}
		svc := in.GetService()
		if svc == "" {
			svc = v.GetService()
		}
		out = append(out, Instance{ID: in.GetId(), Service: svc, Host: in.GetHost(), IP: in.GetIp(), Port: int(in.GetPort()),
			DC: in.GetDc(), Version: in.GetVersion(), Tags: slices.Clone(in.GetTags()), Weight: w})
	}
	// A policy weight of 0 takes an instance out of rotation, unless every one has 0.
	if nonzero := slices.DeleteFunc(slices.Clone(out), func(i Instance) bool { return i.Weight == 0 }); len(nonzero) > 0 {
		out = nonzero
	}
	slices.SortFunc(out, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return out
}
