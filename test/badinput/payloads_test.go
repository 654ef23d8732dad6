package badinput

import (
	"net/url"
	"strings"
)

// payload is one hostile string and a short name for test names.
type payload struct {
	name  string
	value string
}

// shellPayloads are shell metacharacter injections: each creates the sentinel file if
// anything ever hands it to a shell. Half of them have no space and no slash (they name
// the sentinel relative to the shell's directory and use ${IFS}), so that a validator
// cannot refuse them merely for a space or a slash.
func shellPayloads(sentinel string) []payload {
	return []payload{
		{"subst", "$(touch " + sentinel + ")"},
		{"backticks", "`touch " + sentinel + "`"},
		{"semicolon", "; touch " + sentinel},
		{"pipe", "| touch " + sentinel},
		{"and", "&& touch " + sentinel},
		{"newline", "x\ntouch " + sentinel},
		{"crlf", "x\r\ntouch " + sentinel},
		{"quote-break", "'; touch " + sentinel + "; '"},
		{"redirect", "x > " + sentinel},
		{"subst-bare", "a$(touch${IFS}" + sentinelName + ")"},
		{"backticks-bare", "a`touch${IFS}" + sentinelName + "`"},
		{"semicolon-bare", "a;touch${IFS}" + sentinelName},
		{"pipe-bare", "a|touch${IFS}" + sentinelName},
		{"amp-bare", "a&touch${IFS}" + sentinelName},
		{"redirect-bare", "a>" + sentinelName},
	}
}

// pathPayloads are path tricks: traversal, absolute paths, encoded dots and slashes, NUL.
func pathPayloads() []payload {
	return []payload{
		{"dotdot", "../../../../../../etc/passwd"},
		{"dotdot-only", ".."},
		{"dot", "."},
		{"inner-dotdot", "a/../../b"},
		{"absolute", "/etc/passwd"},
		{"encoded-dotdot", "%2e%2e%2f%2e%2e%2fetc"},
		{"backslash", `..\..\windows`},
		{"nul", "a\x00b"},
		{"double-slash", "a//b"},
		{"dotdot-tail", "a/.."},
		{"overlong-dots", "....//....//etc"},
		{"home", "~root/.ssh"},
	}
}

// oddPayloads are other strings no identifier may be: control characters, bidi
// overrides, look-alike Unicode, empty and blank, and oversized.
func oddPayloads() []payload {
	return []payload{
		{"empty", ""},
		{"blank", "   "},
		{"escape", "a\x1b[2Jb"},
		{"tab", "a\tb"},
		{"bidi", "a\u202egnp.exe"},
		{"fullwidth", "ａｂｃ"},
		{"upper", "HOTEL"},
		{"long-300", strings.Repeat("a", 300)},
		{"long-70k", strings.Repeat("b", 70<<10)},
	}
}

// identPayloads are everything an identifier (service path, host, version, name) must
// refuse.
func identPayloads(sentinel string) []payload {
	var out []payload
	out = append(out, shellPayloads(sentinel)...)
	out = append(out, pathPayloads()...)
	out = append(out, oddPayloads()...)
	return out
}

// urlIdentPayloads are identPayloads for a service path or id in a URL path. An
// absolute path is left out: handlers trim the slashes around a path value, so
// /v1/tree/%2Fetc%2Fpasswd is the valid service etc/passwd. So are the empty payload
// (another route) and a doubled slash (the mux redirects it).
func urlIdentPayloads(sentinel string) []payload {
	return without(identPayloads(sentinel), "absolute", "empty", "double-slash")
}

// without drops the payloads with the given names.
func without(ps []payload, names ...string) []payload {
	var out []payload
	for _, p := range ps {
		drop := false
		for _, n := range names {
			if p.name == n {
				drop = true
			}
		}
		if !drop {
			out = append(out, p)
		}
	}
	return out
}

// pathSegments turns a payload into the forms it can take in a URL path: percent-encoded
// as one segment, and raw (slashes and dots as they are, other bytes encoded).
func pathSegments(p payload) []payload {
	enc := url.PathEscape(p.value)
	raw := rawPath(p.value)
	out := []payload{{p.name + "/enc", enc}}
	if raw != enc {
		out = append(out, payload{p.name + "/raw", raw})
	}
	return out
}

// rawPath percent-encodes what cannot go in a request line (controls, space, %, ?, #,
// non-ASCII) and keeps the rest, slashes and dots included.
func rawPath(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '%' && !isHexPair(s, i+1) || c == '?' || c == '#' || c == '"' || c == '<' || c == '>' || c == '\\' || c == '^' || c == '`' || c == '{' || c == '|' || c == '}' {
			b.WriteString("%")
			b.WriteString(strings.ToUpper(hex2(c)))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func isHexPair(s string, i int) bool {
	ok := func(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
	return i+1 < len(s) && ok(s[i]) && ok(s[i+1])
}

func hex2(c byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[c>>4], digits[c&15]})
}
