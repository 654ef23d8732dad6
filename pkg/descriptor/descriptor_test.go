package descriptor

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var update = flag.Bool("update", false, "rewrite testdata/bad/*.err from the parser's output")

// strip drops what Parse records for error messages, for comparisons.
func strip(d *Descriptor) Descriptor {
	c := *d
	c.file, c.lines = "", nil
	return c
}

func TestParseGood(t *testing.T) {
	defaultHealth := Health{Interval: DefaultInterval, Timeout: DefaultTimeout, Rise: DefaultRise, Fall: DefaultFall}
	cases := map[string]Descriptor{
		"minimal.yaml": {
			Service: "batch/report-builder",
			Scripts: Scripts{Start: "bin/start", Stop: "bin/stop"},
			Health:  defaultHealth,
			Weight:  DefaultWeight,
		},
		"full.yaml": {
			Service: "hotel/search",
			Port:    8080,
			Scripts: Scripts{Start: "bin/start.sh", Stop: "bin/stop.sh", Health: "bin/health.sh", Reload: "bin/reload.sh"},
			Health:  Health{Interval: 10 * time.Second, Timeout: 1500 * time.Millisecond, Rise: 1, Fall: 5},
			Templates: []Template{
				{
					Source:      "conf/upstream.tmpl",
					Destination: "conf/upstream.conf",
					Services:    []string{"hotel/pricing", "hotel/inventory"},
					Keys:        []string{"hotel/search/flags.json"},
					Wait:        Wait{Min: 2 * time.Second, Max: 10 * time.Second},
					Check:       []string{"nginx", "-t", "-c", "conf/nginx.conf"},
				},
				{
					Source:      "conf/app.tmpl",
					Destination: "conf/app.yaml",
					Wait:        Wait{Min: 500 * time.Millisecond, Max: 2 * time.Second},
				},
			},
			Tags:   []string{"canary", "gpu", "2024"},
			Weight: 250,
		},
		"quoted.yaml": {
			Service:   "hotel/search",
			Port:      8080,
			Scripts:   Scripts{Start: "bin/start", Stop: "bin/stop"},
			Health:    defaultHealth,
			Templates: []Template{},
			Tags:      []string{},
			Weight:    DefaultWeight,
		},
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "good", "*.yaml"))
	if len(files) != len(cases) {
		t.Errorf("testdata/good: got %d files, want %d", len(files), len(cases))
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			d, err := Load(filepath.Join("testdata", "good", name))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := strip(d); !reflect.DeepEqual(got, want) {
				t.Errorf("Load:\n got %+v\nwant %+v", got, want)
			}
			if err := d.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

// TestParseBad parses each testdata/bad/*.yaml and compares the error text with the .err
// file beside it.
func TestParseBad(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "bad", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("testdata/bad: %v, %d files", err, len(files))
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			d, err := Parse("berth.yaml", data)
			if err == nil {
				t.Fatalf("Parse: got %+v, want an error", strip(d))
			}
			if d != nil {
				t.Errorf("Parse: got a descriptor with the error %v", err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse: got %v, want it to wrap ErrInvalid", err)
			}
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("Parse: got %T, want Errors", err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(file, ".yaml") + ".err"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("Parse error:\n got %s\nwant %s", got, want)
			}
			for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
				if !strings.HasPrefix(line, "berth.yaml:") {
					t.Errorf("error line %q: want it to start with the file name", line)
				}
			}
		})
	}
}

func TestLoadNamesFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "berth.yaml")
	if err := os.WriteFile(p, []byte("service: hotel/search\nscripts: {start: a, stop: b}\nprot: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if want := p + `:3: unknown field "prot" (did you mean "port"?)`; err == nil || err.Error() != want {
		t.Errorf("Load: got %v, want %s", err, want)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load missing: got %v, want %v", err, os.ErrNotExist)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("x", MaxSize)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Errorf("Load big: got %v, want a size error", err)
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	d := &Descriptor{
		Service: "hotel/search",
		Port:    80,
		Scripts: Scripts{Start: "bin/start", Stop: "bin/stop"},
		Health:  Health{Interval: time.Second, Timeout: 2 * time.Second, Rise: 1, Fall: 1},
		Weight:  100,
	}
	err := d.Validate()
	if want := "health.timeout 2s must not exceed health.interval 1s"; err == nil || err.Error() != want {
		t.Errorf("Validate: got %v, want %s", err, want)
	}
	d.Health.Timeout = 500 * time.Millisecond
	if err := d.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestCheckFiles(t *testing.T) {
	d, err := Load(filepath.Join("testdata", "good", "full.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	pkg := fstest.MapFS{
		"bin/start.sh":       {Mode: 0o755},
		"bin/stop.sh":        {Mode: 0o755},
		"bin/health.sh":      {Mode: 0o644},
		"bin/reload.sh":      {Mode: fsDir},
		"conf/upstream.tmpl": {Mode: 0o644},
	}
	err = d.CheckFiles(pkg)
	want := strings.Join([]string{
		filepath.Join("testdata", "good", "full.yaml") + `:6: scripts.health "bin/health.sh" is not executable`,
		filepath.Join("testdata", "good", "full.yaml") + `:7: scripts.reload "bin/reload.sh" is not a regular file`,
		filepath.Join("testdata", "good", "full.yaml") + `:21: templates[1].source "conf/app.tmpl" is not in the package`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("CheckFiles:\n got %v\nwant %s", err, want)
	}
	pkg["bin/health.sh"].Mode = 0o755
	pkg["bin/reload.sh"] = &fstest.MapFile{Mode: 0o755}
	pkg["conf/app.tmpl"] = &fstest.MapFile{Mode: 0o644}
	if err := d.CheckFiles(pkg); err != nil {
		t.Errorf("CheckFiles: %v", err)
	}
}

const fsDir = 1 << 31 // fs.ModeDir

func FuzzParse(f *testing.F) {
	for _, dir := range []string{"good", "bad"} {
		files, _ := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse("berth.yaml", data)
		if err != nil {
			if d != nil {
				t.Errorf("Parse: got a descriptor and the error %v", err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse: got %v, want it to wrap ErrInvalid", err)
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "berth.yaml") {
					t.Errorf("error line %q: want the file name first", line)
				}
			}
			return
		}
		if err := d.Validate(); err != nil {
			t.Errorf("Validate after Parse: %v", err)
		}
		if d.Service == "" || d.Scripts.Start == "" || d.Scripts.Stop == "" {
			t.Errorf("Parse: got %+v without service or scripts", strip(d))
		}
		if d.Weight < 1 || d.Weight > MaxWeight || d.Port < 0 || d.Port > 65535 {
			t.Errorf("Parse: got weight %d, port %d", d.Weight, d.Port)
		}
		if d.Health.Timeout <= 0 || d.Health.Timeout >= d.Health.Interval || d.Health.Rise < 1 || d.Health.Fall < 1 {
			t.Errorf("Parse: got health %+v", d.Health)
		}
		for _, p := range append([]string{d.Scripts.Start, d.Scripts.Stop}, d.Scripts.Health, d.Scripts.Reload) {
			if strings.HasPrefix(p, "/") || strings.Contains("/"+p+"/", "/../") {
				t.Errorf("Parse: got script path %q", p)
			}
		}
	})
}
