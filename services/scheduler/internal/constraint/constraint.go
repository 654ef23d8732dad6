// Package constraint parses and evaluates placement constraints, a small label expression
// language: clauses joined by "," (AND), each one of
//
//	key=value      key!=value
//	key in (a,b)   key not in (a,b)
//	has key        !has key
//
// Keys and values are made of letters, digits and "_.-/:". The keys dc, rack and id match
// the host's own fields; every other key matches its labels.
package constraint

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("constraint: syntax error")

// Op is a clause's operator.
type Op uint8

// Operators.
const (
	OpEq Op = iota + 1
	OpNe
	OpIn
	OpNotIn
	OpHas
	OpNotHas
)

// Clause is one condition on one key.
type Clause struct {
	Key    string
	Op     Op
	Values []string
}

// Expr is a parsed expression: every clause must hold. The zero Expr matches every host.
type Expr struct {
	Clauses []Clause
	src     string
}

// Attrs is what an expression is evaluated against: a host's fields and labels.
type Attrs interface {
	// Attr returns the value of key and whether the host has it.
	Attr(key string) (string, bool)
}

// Parse reads s; an empty (or blank) s is the expression that matches everything. Errors
// wrap ErrSyntax and name the clause.
func Parse(s string) (Expr, error) {
	e := Expr{src: strings.TrimSpace(s)}
	if e.src == "" {
		return e, nil
	}
	parts, err := split(e.src)
	if err != nil {
		return Expr{}, err
	}
	for i, p := range parts {
		c, err := parseClause(p)
		if err != nil {
			return Expr{}, fmt.Errorf("%w: clause %d %q: %v", ErrSyntax, i+1, p, err)
		}
		e.Clauses = append(e.Clauses, c)
	}
	return e, nil
}

// split cuts s at the commas outside parentheses.
func split(s string) ([]string, error) {
	var parts []string
	depth, start := 0, 0
	for i, r := range s {
		switch r {
		case '(':
			depth++
			if depth > 1 {
				return nil, fmt.Errorf("%w: nested parenthesis at offset %d", ErrSyntax, i)
			}
		case ')':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("%w: unbalanced \")\" at offset %d", ErrSyntax, i)
			}
		case ',':
			if depth == 0 {
				parts = append(parts, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("%w: unclosed \"(\"", ErrSyntax)
	}
	parts = append(parts, strings.TrimSpace(s[start:]))
	for i, p := range parts {
		if p == "" {
			return nil, fmt.Errorf("%w: clause %d is empty", ErrSyntax, i+1)
		}
	}
	return parts, nil
}

func parseClause(p string) (Clause, error) {
	if rest, ok := strings.CutPrefix(p, "!has "); ok {
		return keyOnly(rest, OpNotHas)
	}
	if rest, ok := strings.CutPrefix(p, "has "); ok {
		return keyOnly(rest, OpHas)
	}
	if k, v, ok := strings.Cut(p, "!="); ok {
		return keyValue(k, v, OpNe)
	}
	if k, v, ok := strings.Cut(p, "="); ok {
		return keyValue(k, strings.TrimPrefix(v, "="), OpEq)
	}
	fields := strings.Fields(p)
	switch {
	case len(fields) >= 3 && fields[1] == "in":
		return keySet(fields[0], strings.Join(fields[2:], " "), OpIn)
	case len(fields) >= 4 && fields[1] == "not" && fields[2] == "in":
		return keySet(fields[0], strings.Join(fields[3:], " "), OpNotIn)
	case len(fields) >= 3 && fields[1] == "notin":
		return keySet(fields[0], strings.Join(fields[2:], " "), OpNotIn)
	}
	return Clause{}, errors.New("want key=value, key!=value, key in (a,b), key not in (a,b), has key or !has key")
}

func keyOnly(k string, op Op) (Clause, error) {
	k = strings.TrimSpace(k)
	if err := checkWord("key", k); err != nil {
		return Clause{}, err
	}
	return Clause{Key: k, Op: op}, nil
}

func keyValue(k, v string, op Op) (Clause, error) {
	k, v = strings.TrimSpace(k), strings.TrimSpace(v)
	if err := checkWord("key", k); err != nil {
		return Clause{}, err
	}
	if err := checkWord("value", v); err != nil {
		return Clause{}, err
	}
	return Clause{Key: k, Op: op, Values: []string{v}}, nil
}

func keySet(k, set string, op Op) (Clause, error) {
	if err := checkWord("key", k); err != nil {
		return Clause{}, err
	}
	set = strings.TrimSpace(set)
	if !strings.HasPrefix(set, "(") || !strings.HasSuffix(set, ")") {
		return Clause{}, fmt.Errorf("set %q: want values in parentheses: (a,b)", set)
	}
	var vals []string
	for v := range strings.SplitSeq(set[1:len(set)-1], ",") {
		v = strings.TrimSpace(v)
		if err := checkWord("value", v); err != nil {
			return Clause{}, err
		}
		vals = append(vals, v)
	}
	return Clause{Key: k, Op: op, Values: vals}, nil
}

func checkWord(what, w string) error {
	if w == "" {
		return fmt.Errorf("empty %s", what)
	}
	for _, r := range w {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_.-/:", r)
		if !ok {
			return fmt.Errorf("%s %q: character %q not allowed (letters, digits and _.-/: only)", what, w, r)
		}
	}
	return nil
}

// String returns the expression as parsed.
func (e Expr) String() string { return e.src }

// Empty reports whether the expression has no clause.
func (e Expr) Empty() bool { return len(e.Clauses) == 0 }

// Match reports whether a satisfies every clause.
func (e Expr) Match(a Attrs) bool {
	for i := range e.Clauses {
		if !e.Clauses[i].Match(a) {
			return false
		}
	}
	return true
}

// Match reports whether a satisfies the clause. A missing key satisfies != and not in.
func (c *Clause) Match(a Attrs) bool {
	v, ok := a.Attr(c.Key)
	switch c.Op {
	case OpEq:
		return ok && v == c.Values[0]
	case OpNe:
		return !ok || v != c.Values[0]
	case OpIn:
		return ok && slices.Contains(c.Values, v)
	case OpNotIn:
		return !ok || !slices.Contains(c.Values, v)
	case OpHas:
		return ok
	case OpNotHas:
		return !ok
	}
	return false
}

// Only returns the values key is restricted to by = and in clauses (intersected), and
// whether any such clause exists: a scheduler uses it to look only at the hosts of those
// datacenters.
func (e Expr) Only(key string) ([]string, bool) {
	var set []string
	found := false
	for _, c := range e.Clauses {
		if c.Key != key || (c.Op != OpEq && c.Op != OpIn) {
			continue
		}
		if !found {
			set, found = slices.Clone(c.Values), true
			continue
		}
		set = slices.DeleteFunc(set, func(v string) bool { return !slices.Contains(c.Values, v) })
	}
	return set, found
}
