package badinput

import "strings"

// Known defects: hostile inputs this suite found accepted whose fix belongs to code owned
// elsewhere, or to a decision not made here. Their cases still run; while the input is
// accepted the case is skipped with the defect named, and once it is refused the case
// fails until its entry is removed, so the list cannot go stale.
const (
	// defectTokenIDs: task and step ids and event types are NATS subject tokens
	// (proto/subjects.Token), which only refuse '.', '*', '>', whitespace, control
	// characters and a leading '$'. (Host ids and datacenters are Names: letters, digits,
	// '-' and '_'.)
	defectTokenIDs = "task and step ids and event types are any NATS subject token (proto/subjects/subjects.go Token): " +
		"shell metacharacters ; | & ` ( ) < and $ after the first byte, and non-ASCII letters, are accepted"
	// defectConstraints: the controller keeps placement.constraints as text; only the
	// scheduler parses it, after the deployment was accepted.
	defectConstraints = "placement.constraints is not parsed by the controller's API (services/task-controller/internal/api/request.go " +
		"PlacementJSON.proto checks only length and control characters): any expression is accepted and the deployment fails later at placement"
	// validCapitalDC is not a defect: capitals make a valid datacenter name, answered for
	// that (unknown) datacenter.
	validCapitalDC = "a datacenter name in capitals (HOTEL) is valid: the agent answers for that datacenter"
)

// defectScopes: API token scopes (pkg/apitoken cleanScope) refuse only white space,
// wildcards and "." or ".." segments.
const defectScopes = "API token scopes are not checked as service paths (pkg/apitoken/apitoken.go cleanScope refuses only white space, " +
	"wildcards and dot segments): escapes, non-ASCII, upper case and shell metacharacters are accepted; such a scope grants nothing, but a mistyped one goes unnoticed"

// tokenAccepted are the identPayloads a subject token takes.
var tokenAccepted = []string{"subst-bare", "backticks-bare", "semicolon-bare", "pipe-bare", "amp-bare", "encoded-dotdot", "fullwidth"}

// constraintPayloads are the shell payloads tried on placement.constraints: a few, since
// every one but the newline is accepted (defectConstraints) and each accepted one starts a
// deployment to settle.
func constraintPayloads(sentinel string) []payload {
	return pick(shellPayloads(sentinel), "subst", "backticks", "newline", "semicolon-bare", "pipe-bare", "redirect-bare")
}

// constraintsAccepted are the constraintPayloads the API accepts.
var constraintsAccepted = []string{"subst", "backticks", "semicolon-bare", "pipe-bare", "redirect-bare"}

// markKnown marks the cases of slot (a body field "hosts.0" or a query "?dc", as in the
// case names) with the given payloads as the known defect why.
func markKnown(cases []httpCase, why, slot string, payloads ...string) {
	for i := range cases {
		for _, p := range payloads {
			if strings.HasSuffix(cases[i].name, slot+"="+p) {
				cases[i].known = why
			}
		}
	}
}
