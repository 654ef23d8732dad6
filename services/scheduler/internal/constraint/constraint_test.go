package constraint

import (
	"errors"
	"slices"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type attrs map[string]string

func (a attrs) Attr(k string) (string, bool) { v, ok := a[k]; return v, ok }

func TestMatch(t *testing.T) {
	host := attrs{"dc": "dc1", "rack": "r7", "ssd": "true", "kernel": "6.1"}
	tests := []struct {
		expr string
		want bool
	}{
		{"", true},
		{"dc=dc1", true},
		{"dc==dc1", true},
		{"dc=dc2", false},
		{"dc!=dc2", true},
		{"gpu!=yes", true},
		{"dc in (dc1,dc2)", true},
		{"dc in ( dc3 , dc2 )", false},
		{"dc not in (dc3)", true},
		{"dc notin (dc1)", false},
		{"has ssd", true},
		{"has gpu", false},
		{"!has gpu", true},
		{"dc=dc1, has ssd, rack in (r6,r7)", true},
		{"dc=dc1, has gpu", false},
		{"kernel=6.1,ssd=true", true},
	}
	for _, tt := range tests {
		e, err := Parse(tt.expr)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.expr, err)
			continue
		}
		if got := e.Match(host); got != tt.want {
			t.Errorf("Parse(%q).Match(%v): got %v, want %v", tt.expr, host, got, tt.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, expr := range []string{
		"dc", "dc=", "=dc1", "dc=dc 1", "dc in dc1", "dc in (dc1", "dc in ((a))", "a=b,,c=d", "has", "has a b",
		"dc~dc1", "dc in (a,)", "zone=é",
	} {
		if _, err := Parse(expr); !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q): got err %v, want ErrSyntax", expr, err)
		}
	}
}

func TestOnly(t *testing.T) {
	tests := []struct {
		expr string
		want []string
		ok   bool
	}{
		{"has ssd", nil, false},
		{"dc=dc1", []string{"dc1"}, true},
		{"dc in (dc1,dc2), dc!=dc2", []string{"dc1", "dc2"}, true},
		{"dc in (dc1,dc2), dc in (dc2,dc3)", []string{"dc2"}, true},
	}
	for _, tt := range tests {
		e, err := Parse(tt.expr)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := e.Only("dc")
		if ok != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("Parse(%q).Only(dc): got %v %v, want %v %v", tt.expr, got, ok, tt.want, tt.ok)
		}
	}
}
