// Package config loads a service's configuration in Berth's fixed order: the defaults the
// caller put in the struct, then a strict YAML file, then BERTH_* environment variables,
// then command-line flags, then Validate. Every error names where the bad value came from:
// the file and line, the variable, or the flag.
//
// The struct describes itself with tags on exported fields:
//
//	yaml:"nats_url"         the key in the file (nested structs are nested mappings)
//	env:"NATS_URL"          the variable, after the prefix (BERTH_NATS_URL)
//	flag:"nats"             the flag name (--nats)
//	usage:"NATS server URL" the flag's help text
//
// Supported field types: string, bool, int, int64, uint64, uint32, float64, time.Duration,
// []string (a repeatable flag; comma-separated in the environment) and nested structs.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Validator is implemented by configurations that check themselves after loading.
type Validator interface {
	Validate() error
}

// Options tune Load.
type Options struct {
	// Name is the program name used in flag errors and usage.
	Name string
	// EnvPrefix is prepended to every env tag; default "BERTH_".
	EnvPrefix string
	// LookupEnv reads the environment; default os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// ConfigFlag is the name of the flag that names the YAML file; default "config". The
	// variable <prefix>CONFIG names it too.
	ConfigFlag string
	// Usage, when set, is printed above the flag list on -h.
	Usage string
}

// ErrHelp is returned when the arguments asked for help; the usage has been printed.
var ErrHelp = flag.ErrHelp

// Load fills dst (a pointer to a struct holding the defaults) from the file, the environment
// and args, in that order, then calls Validate when dst implements Validator.
func Load(dst any, args []string, opts Options) error {
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("config: Load needs a pointer to a struct, got %T", dst)
	}
	if opts.EnvPrefix == "" {
		opts.EnvPrefix = "BERTH_"
	}
	if opts.LookupEnv == nil {
		opts.LookupEnv = os.LookupEnv
	}
	if opts.ConfigFlag == "" {
		opts.ConfigFlag = "config"
	}
	fields, err := collect(rv.Elem(), "", "", "")
	if err != nil {
		return err
	}

	// Flags are parsed first into a separate set of values, and applied last.
	fs := flag.NewFlagSet(opts.Name, flag.ContinueOnError)
	var file string
	fs.StringVar(&file, opts.ConfigFlag, "", "YAML configuration file")
	set := map[string]string{}
	multi := map[string][]string{}
	for _, f := range fields {
		if f.flag == "" {
			continue
		}
		name := f.flag
		def := f.current()
		if f.v.Kind() == reflect.Bool {
			// A boolean flag alone (--verbose) means true.
			fs.Var(boolFlag{set: set, name: name, f: f}, name, f.usage+" (default "+def+")")
			continue
		}
		if f.v.Kind() == reflect.Slice {
			fs.Func(name, f.usage+" (repeatable)", func(s string) error { multi[name] = append(multi[name], s); return nil })
			continue
		}
		fs.Func(name, f.usage+" (default "+def+")", func(s string) error { set[name] = s; return checkValue(f, s) })
	}
	if opts.Usage != "" {
		fs.Usage = func() {
			fmt.Fprintln(fs.Output(), opts.Usage)
			fs.PrintDefaults()
		}
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	if file == "" {
		file, _ = opts.LookupEnv(opts.EnvPrefix + "CONFIG")
	}
	if file != "" {
		if err := LoadFile(file, dst); err != nil {
			return err
		}
	}
	for _, f := range fields {
		if f.env == "" {
			continue
		}
		name := opts.EnvPrefix + f.env
		s, ok := opts.LookupEnv(name)
		if !ok {
			continue
		}
		if f.v.Kind() == reflect.Slice {
			var parts []string
			for _, p := range strings.Split(s, ",") {
				if p = strings.TrimSpace(p); p != "" {
					parts = append(parts, p)
				}
			}
			f.v.Set(reflect.ValueOf(parts))
			continue
		}
		if err := setValue(f.v, s); err != nil {
			return fmt.Errorf("environment %s: %w", name, err)
		}
	}
	for _, f := range fields {
		if f.flag == "" {
			continue
		}
		if vals, ok := multi[f.flag]; ok {
			f.v.Set(reflect.ValueOf(vals))
			continue
		}
		if s, ok := set[f.flag]; ok {
			if err := setValue(f.v, s); err != nil {
				return fmt.Errorf("flag --%s: %w", f.flag, err)
			}
		}
	}
	if v, ok := dst.(Validator); ok {
		if err := v.Validate(); err != nil {
			if file != "" {
				return fmt.Errorf("config %s: %w", file, err)
			}
			return fmt.Errorf("config: %w", err)
		}
	}
	return nil
}

// LoadFile decodes the YAML file at path into dst strictly: an unknown key, a value of the
// wrong type or a malformed document is an error naming the file, the line and the field.
func LoadFile(path string, dst any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return Decode(path, data, dst)
}

// Decode is LoadFile on bytes; name is used in errors.
func Decode(name string, data []byte, dst any) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %s", name, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) == 0 {
		return nil // an empty file changes nothing
	}
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("config: Decode needs a pointer to a struct, got %T", dst)
	}
	return decodeStruct(name, "", doc.Content[0], rv.Elem())
}

func decodeStruct(file, path string, n *yaml.Node, v reflect.Value) error {
	if n.Kind != yaml.MappingNode {
		where := path
		if where == "" {
			where = "the document"
		}
		return fmt.Errorf("%s:%d: %s must be a mapping", file, n.Line, where)
	}
	t := v.Type()
	keys := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		k := strings.Split(sf.Tag.Get("yaml"), ",")[0]
		if k == "-" || k == "" {
			continue
		}
		keys[k] = i
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		key := kn.Value
		full := key
		if path != "" {
			full = path + "." + key
		}
		if seen[key] {
			return fmt.Errorf("%s:%d: field %q given twice", file, kn.Line, full)
		}
		seen[key] = true
		idx, ok := keys[key]
		if !ok {
			return fmt.Errorf("%s:%d: unknown field %q", file, kn.Line, full)
		}
		fv := v.Field(idx)
		if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeOf(time.Duration(0)) {
			if err := decodeStruct(file, full, vn, fv); err != nil {
				return err
			}
			continue
		}
		if err := decodeScalar(vn, fv); err != nil {
			return fmt.Errorf("%s:%d: field %q: %w", file, vn.Line, full, err)
		}
	}
	return nil
}

func decodeScalar(n *yaml.Node, v reflect.Value) error {
	if v.Kind() == reflect.Slice {
		if n.Kind != yaml.SequenceNode {
			return errors.New("want a list")
		}
		out := reflect.MakeSlice(v.Type(), 0, len(n.Content))
		for _, e := range n.Content {
			if e.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: want a scalar list item", e.Line)
			}
			ev := reflect.New(v.Type().Elem()).Elem()
			if err := setValue(ev, e.Value); err != nil {
				return err
			}
			out = reflect.Append(out, ev)
		}
		v.Set(out)
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		return errors.New("want a single value")
	}
	return setValue(v, n.Value)
}

// field is one settable leaf of the configuration struct.
type field struct {
	v     reflect.Value
	path  string
	env   string
	flag  string
	usage string
}

func (f field) current() string {
	if f.v.Type() == reflect.TypeOf(time.Duration(0)) {
		return time.Duration(f.v.Int()).String()
	}
	return fmt.Sprint(f.v.Interface())
}

func collect(v reflect.Value, path, envPrefix, flagPrefix string) ([]field, error) {
	var out []field
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		y := strings.Split(sf.Tag.Get("yaml"), ",")[0]
		if y == "-" {
			continue
		}
		p := y
		if path != "" {
			p = path + "." + y
		}
		fv := v.Field(i)
		env, fl := sf.Tag.Get("env"), sf.Tag.Get("flag")
		if fv.Kind() == reflect.Struct && sf.Type != reflect.TypeOf(time.Duration(0)) {
			sub, err := collect(fv, p, envPrefix+env, flagPrefix+fl)
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
			continue
		}
		if !supported(fv) {
			return nil, fmt.Errorf("config: field %s has unsupported type %s", p, sf.Type)
		}
		f := field{v: fv, path: p, usage: sf.Tag.Get("usage")}
		if env != "" {
			f.env = envPrefix + env
		}
		if fl != "" {
			f.flag = flagPrefix + fl
		}
		out = append(out, f)
	}
	return out, nil
}

func supported(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int64, reflect.Uint64, reflect.Uint32, reflect.Float64:
		return true
	case reflect.Slice:
		return v.Type().Elem().Kind() == reflect.String
	}
	return false
}

func checkValue(f field, s string) error {
	tmp := reflect.New(f.v.Type()).Elem()
	return setValue(tmp, s)
}

func setValue(v reflect.Value, s string) error {
	if v.Type() == reflect.TypeOf(time.Duration(0)) {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration (like 500ms or 2s)", s)
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not a boolean", s)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v.OverflowInt(n) {
			return fmt.Errorf("%q is not an integer", s)
		}
		v.SetInt(n)
	case reflect.Uint64, reflect.Uint32:
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || v.OverflowUint(n) {
			return fmt.Errorf("%q is not a non-negative integer in range", s)
		}
		v.SetUint(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
		v.SetFloat(n)
	case reflect.Slice:
		v.Set(reflect.Append(v, reflect.ValueOf(s)))
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}

// boolFlag lets a boolean flag be given alone (-verbose) or with a value (-verbose=false).
type boolFlag struct {
	set  map[string]string
	name string
	f    field
}

func (b boolFlag) String() string { return "" }
func (b boolFlag) Set(s string) error {
	if err := checkValue(b.f, s); err != nil {
		return err
	}
	b.set[b.name] = s
	return nil
}
func (b boolFlag) IsBoolFlag() bool { return true }
