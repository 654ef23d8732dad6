package cli

import (
	"fmt"
	"net/url"
	"strings"
)

// pathArg checks an argument that becomes part of an API URL's path (a service path, a
// run id) and returns it escaped segment by segment. An empty, "." or ".." segment is
// refused: the server's router would clean it into another path and redirect there, and
// the request would act on a resource other than the one named (berth tree set a/../b
// would change b; berth deployments show . would read the list).
func pathArg(what, p string) (string, error) {
	segs := strings.Split(p, "/")
	for i, seg := range segs {
		if seg == "" || seg == "." || seg == ".." {
			return "", &ExitError{Code: 2, Err: fmt.Errorf("%s %q: empty, \".\" and \"..\" segments are not allowed", what, p)}
		}
		segs[i] = url.PathEscape(seg)
	}
	return strings.Join(segs, "/"), nil
}

// splitList splits comma-separated flag values, dropping blanks: --hosts a,b --hosts c is
// a, b, c. Flags take it with StringArray rather than StringSlice, whose CSV parsing keeps
// only the first line of a value and would silently drop the rest of "a\nb".
func splitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for s := range strings.SplitSeq(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}
