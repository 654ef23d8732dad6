// Package apitoken handles the bearer tokens of an HTTP API: making them (New), hashing
// them for storage (Hash), and loading a token file that gives each token a name, a role
// and the subtrees of a slash-separated path space it may act on.
//
// A token file is strict YAML; only the SHA-256 of each token is stored, so that the file
// grants nothing to whoever reads it:
//
//	# berth-controller tokens
//	tokens:
//	  - name: alice                # who, in audit records
//	    role: deployer             # viewer | deployer | admin
//	    scopes: [hotel, flight/search]   # subtrees; "/" is the whole tree
//	    sha256: 9f86d081884c7d65...      # hex SHA-256 of the token (berth token new prints it)
//
// Tokens are random (32 bytes from crypto/rand, base64url, prefixed "berth_"), so a plain
// SHA-256 is enough to store them: there is nothing to guess that a slow hash would
// protect.
package apitoken

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Prefix starts every token New makes, so that a leaked token is easy to recognise.
const Prefix = "berth_"

// New returns a new random token.
func New() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	return Prefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Hash returns the hex SHA-256 of a token, as a token file stores it.
func Hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Role is what a token may do. Each role may do what the ones below it may.
type Role int

// The roles, weakest first.
const (
	// Viewer reads.
	Viewer Role = iota + 1
	// Deployer also deploys and runs tasks, and pauses, resumes, aborts and rolls them
	// back, within its scopes.
	Deployer
	// Admin also edits the service tree (and the hosts), within its scopes.
	Admin
)

var roleNames = map[Role]string{Viewer: "viewer", Deployer: "deployer", Admin: "admin"}

func (r Role) String() string {
	if n, ok := roleNames[r]; ok {
		return n
	}
	return fmt.Sprintf("role(%d)", int(r))
}

// ParseRole reads viewer, deployer or admin.
func ParseRole(s string) (Role, error) {
	for r, n := range roleNames {
		if n == s {
			return r, nil
		}
	}
	return 0, fmt.Errorf("role %q: want viewer, deployer or admin", s)
}

// Root is the scope of the whole tree.
const Root = "/"

// Entry is one token of a file.
type Entry struct {
	// Name is who the token is, in logs and audit records.
	Name string
	// Role is what it may do.
	Role Role
	// Scopes are the subtrees it may act on, without leading or trailing slashes; Root
	// is the whole tree.
	Scopes []string
	// Hash is the hex SHA-256 of the token.
	Hash string
}

// Covers reports whether path (hotel/search) is inside one of the entry's scopes: a scope
// covers itself and everything below it (hotel covers hotel and hotel/search, not
// hotels). The empty path — a request that names no service — is covered by Root only.
func (e *Entry) Covers(path string) bool {
	path = strings.Trim(path, "/")
	for _, s := range e.Scopes {
		if s == Root || (path != "" && (path == s || strings.HasPrefix(path, s+"/"))) {
			return true
		}
	}
	return false
}

// Set is the tokens of a file, looked up by hash.
type Set struct {
	entries []Entry
	byHash  map[string]int
}

// Len is how many tokens the set holds.
func (s *Set) Len() int { return len(s.entries) }

// Entries returns a copy of the entries, in file order.
func (s *Set) Entries() []Entry { return slices.Clone(s.entries) }

// Lookup finds the entry of a presented token.
func (s *Set) Lookup(token string) (*Entry, bool) {
	if s == nil || token == "" {
		return nil, false
	}
	i, ok := s.byHash[Hash(token)]
	if !ok {
		return nil, false
	}
	e := s.entries[i]
	return &e, true
}

// Load reads a token file.
func Load(path string) (*Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	return Parse(path, data)
}

type fileEntry struct {
	Name   string   `yaml:"name"`
	Role   string   `yaml:"role"`
	Scopes []string `yaml:"scopes"`
	SHA256 string   `yaml:"sha256"`
}

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)
	hashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Parse reads a token file's bytes; name is used in errors, which give the line.
func Parse(name string, data []byte) (*Set, error) {
	var f struct {
		Tokens []fileEntry `yaml:"tokens"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// An empty file is an empty set (io.EOF).
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("token file %s: %s", name, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	// The lines of the entries, for the errors below.
	var doc yaml.Node
	_ = yaml.Unmarshal(data, &doc)
	lines := entryLines(&doc)
	s := &Set{byHash: map[string]int{}}
	names := map[string]bool{}
	for i, fe := range f.Tokens {
		where := fmt.Sprintf("token file %s: tokens[%d]", name, i)
		if i < len(lines) {
			where = fmt.Sprintf("token file %s:%d: tokens[%d]", name, lines[i], i)
		}
		if !nameRE.MatchString(fe.Name) {
			return nil, fmt.Errorf("%s: name %q: want 1 to 64 letters, digits, '.', '_', '@' or '-'", where, fe.Name)
		}
		if names[fe.Name] {
			return nil, fmt.Errorf("%s: name %q is used twice", where, fe.Name)
		}
		names[fe.Name] = true
		role, err := ParseRole(fe.Role)
		if err != nil {
			return nil, fmt.Errorf("%s (%s): %w", where, fe.Name, err)
		}
		if len(fe.Scopes) == 0 {
			return nil, fmt.Errorf("%s (%s): scopes: required (a list of subtrees, or [\"/\"] for the whole tree)", where, fe.Name)
		}
		var scopes []string
		for _, sc := range fe.Scopes {
			c, err := cleanScope(sc)
			if err != nil {
				return nil, fmt.Errorf("%s (%s): scopes: %w", where, fe.Name, err)
			}
			scopes = append(scopes, c)
		}
		h := strings.ToLower(strings.TrimPrefix(fe.SHA256, "sha256:"))
		if !hashRE.MatchString(h) {
			if strings.HasPrefix(fe.SHA256, Prefix) {
				return nil, fmt.Errorf("%s (%s): sha256: this is a token, not its hash; store `berth token hash` of it instead", where, fe.Name)
			}
			return nil, fmt.Errorf("%s (%s): sha256: want 64 hex digits (the SHA-256 of the token)", where, fe.Name)
		}
		if _, dup := s.byHash[h]; dup {
			return nil, fmt.Errorf("%s (%s): sha256: the same token is listed twice", where, fe.Name)
		}
		s.byHash[h] = len(s.entries)
		s.entries = append(s.entries, Entry{Name: fe.Name, Role: role, Scopes: scopes, Hash: h})
	}
	return s, nil
}

func entryLines(doc *yaml.Node) []int {
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "tokens" && m.Content[i+1].Kind == yaml.SequenceNode {
			var out []int
			for _, n := range m.Content[i+1].Content {
				out = append(out, n.Line)
			}
			return out
		}
	}
	return nil
}

// cleanScope checks a scope: Root, or path segments without white space, wildcards, "."
// or ".." segments; leading and trailing slashes are dropped.
func cleanScope(s string) (string, error) {
	if s == Root || s == "*" {
		return Root, nil
	}
	c := strings.Trim(s, "/")
	if c == "" {
		return "", fmt.Errorf("scope %q: empty (use \"/\" for the whole tree)", s)
	}
	for _, seg := range strings.Split(c, "/") {
		if seg == "" || seg == "." || seg == ".." || strings.ContainsAny(seg, " \t\r\n*?>") {
			return "", fmt.Errorf("scope %q: segment %q: want a service path like hotel or hotel/search", s, seg)
		}
	}
	return c, nil
}

// FormatEntry returns the YAML lines of a token file entry for the token, as `berth
// token new` prints them.
func FormatEntry(name string, role Role, scopes []string, token string) string {
	q := make([]string, len(scopes))
	for i, s := range scopes {
		q[i] = fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("  - name: %s\n    role: %s\n    scopes: [%s]\n    sha256: %s\n", name, role, strings.Join(q, ", "), Hash(token))
}

// CheckEntry checks a name, role and scopes the way Parse does, and returns the scopes
// cleaned.
func CheckEntry(name string, role Role, scopes []string) ([]string, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("name %q: want 1 to 64 letters, digits, '.', '_', '@' or '-'", name)
	}
	if _, ok := roleNames[role]; !ok {
		return nil, fmt.Errorf("role %v: want viewer, deployer or admin", role)
	}
	if len(scopes) == 0 {
		return nil, errors.New("scopes: at least one (\"/\" for the whole tree)")
	}
	var out []string
	for _, s := range scopes {
		c, err := cleanScope(s)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
