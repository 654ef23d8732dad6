package apitoken

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNewAndHash(t *testing.T) {
	a, err := New()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := New()
	if a == b || !strings.HasPrefix(a, Prefix) || len(a) != len(Prefix)+43 {
		t.Fatalf("New: got %q and %q; want two different berth_ tokens of 32 random bytes", a, b)
	}
	// The SHA-256 of "abc".
	if got, want := Hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Fatalf("Hash(abc): got %s, want %s", got, want)
	}
}

func TestParseAndLookup(t *testing.T) {
	alice, _ := New()
	root, _ := New()
	file := "# tokens\ntokens:\n" + FormatEntry("alice", Deployer, []string{"hotel", "/flight/search/"}, alice) +
		FormatEntry("ops", Admin, []string{"/"}, root)
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Load(path)
	if err != nil {
		t.Fatalf("Load:\n%s\n%v", file, err)
	}
	if s.Len() != 2 {
		t.Fatalf("Len: got %d, want 2", s.Len())
	}
	if strings.Contains(file, alice) {
		t.Fatal("the file holds the token itself; want only its hash")
	}
	e, ok := s.Lookup(alice)
	if !ok || e.Name != "alice" || e.Role != Deployer {
		t.Fatalf("Lookup(alice's token): got %+v, %v", e, ok)
	}
	if _, ok := s.Lookup(alice + "x"); ok {
		t.Fatal("Lookup of an unknown token: got an entry")
	}
	if _, ok := s.Lookup(""); ok {
		t.Fatal("Lookup of no token: got an entry")
	}
	covers := []struct {
		path string
		want bool
	}{
		{"hotel", true}, {"hotel/search", true}, {"hotels", false}, {"flight", false},
		{"flight/search", true}, {"flight/search/api", true}, {"flight/searches", false}, {"", false},
	}
	for _, c := range covers {
		if got := e.Covers(c.path); got != c.want {
			t.Errorf("alice (hotel, flight/search) Covers(%q): got %v, want %v", c.path, got, c.want)
		}
	}
	r, _ := s.Lookup(root)
	if !r.Covers("") || !r.Covers("anything/below") {
		t.Error("ops (/) must cover the whole tree and requests that name no service")
	}
	if empty, err := Parse("empty", nil); err != nil || empty.Len() != 0 {
		t.Fatalf("empty file: got %v, %v; want an empty set", empty, err)
	}
}

func TestParseRejects(t *testing.T) {
	h := Hash("x")
	tests := []struct{ name, file, want string }{
		{"unknown field", "tokens:\n  - name: a\n    role: admin\n    scopes: [/]\n    sha256: " + h + "\n    secret: y\n", "line 6"},
		{"bad role", "tokens:\n  - name: a\n    role: root\n    scopes: [/]\n    sha256: " + h + "\n", "f:2: tokens[0] (a): role \"root\""},
		{"no scopes", "tokens:\n  - name: a\n    role: admin\n    sha256: " + h + "\n", "scopes: required"},
		{"bad scope", "tokens:\n  - name: a\n    role: admin\n    scopes: [hotel/../flight]\n    sha256: " + h + "\n", "segment \"..\""},
		{"plaintext token", "tokens:\n  - name: a\n    role: admin\n    scopes: [/]\n    sha256: berth_abc\n", "not its hash"},
		{"short hash", "tokens:\n  - name: a\n    role: admin\n    scopes: [/]\n    sha256: abc\n", "64 hex digits"},
		{"bad name", "tokens:\n  - name: a b\n    role: admin\n    scopes: [/]\n    sha256: " + h + "\n", "name \"a b\""},
		{"same name", "tokens:\n  - {name: a, role: admin, scopes: [/], sha256: " + h + "}\n  - {name: a, role: admin, scopes: [/], sha256: " + Hash("y") + "}\n", "f:3: tokens[1]: name \"a\" is used twice"},
		{"same token", "tokens:\n  - {name: a, role: admin, scopes: [/], sha256: " + h + "}\n  - {name: b, role: viewer, scopes: [/], sha256: " + h + "}\n", "listed twice"},
		{"not yaml", "tokens: [", "token file f"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f", []byte(tt.file))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse(%q): got %v, want an error containing %q", tt.file, err, tt.want)
			}
		})
	}
}
