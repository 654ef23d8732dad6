package httpapi

import (
	"net/http"
	"strings"

	"github.com/berthdev/berth/pkg/apiaccess"
	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/dnsview"
)

// AccessRules are the API's rules for pkg/apiaccess, used when the service has a token
// file:
//
//   - /metrics, /healthz and /readyz are not guarded.
//   - GET and HEAD under /v1/ (views, resolve, watch, events, the policies): any valid
//     token; reads are not scoped.
//   - PUT and DELETE /v1/traffic/<service>: a deployer (or admin) whose scopes cover the
//     service. A service path that is not valid counts as naming no service, so only a
//     token of the whole tree gets past (the API then answers 400).
//   - Any other write under /v1/: an admin of the whole tree (there is none today; the
//     API answers 405).
type AccessRules struct{}

// Kind guards every route under /v1; every method but GET, HEAD and OPTIONS writes.
func (AccessRules) Kind(r *http.Request) apiaccess.Kind {
	if r.URL.Path != "/v1" && !strings.HasPrefix(r.URL.Path, "/v1/") {
		return apiaccess.Open
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return apiaccess.Read
	}
	return apiaccess.Write
}

// Need is the service and role of a write.
func (AccessRules) Need(r *http.Request) (apiaccess.Need, error) {
	if svc, ok := strings.CutPrefix(r.URL.Path, "/v1/traffic/"); ok && (r.Method == http.MethodPut || r.Method == http.MethodDelete) {
		svc = strings.Trim(svc, "/")
		if dnsview.CheckServicePath(svc) != nil {
			svc = ""
		}
		return apiaccess.Need{Service: svc, Role: apitoken.Deployer}, nil
	}
	return apiaccess.Need{Role: apitoken.Admin}, nil
}

// WriteAccessError answers the middleware's refusals in the API's error form, with the
// refusal's code: {"error": "...", "code": "unauthenticated"}.
func WriteAccessError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]string{"error": message, "code": code})
}
