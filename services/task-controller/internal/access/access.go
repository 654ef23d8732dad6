// Package access guards berth-controller's HTTP API (DESIGN §10): bearer tokens from a
// token file (pkg/apitoken) with a role — viewer, deployer, admin — scoped to subtrees of
// the service tree, and an audit record of every mutating request, allowed or refused.
//
// Rules, for every route under /v1/ (the console's files, /metrics, /healthz and /readyz
// are not guarded):
//
//   - No token, or one the file does not hold: 401.
//   - GET and HEAD: any token (read access is not scoped).
//   - POST /v1/deployments, POST /v1/tasks: a deployer (or admin) whose scopes cover the
//     body's "service"; a task that names no service needs the whole tree ("/").
//   - POST /v1/{deployments,tasks}/{id}/{action}: a deployer whose scopes cover the run's
//     service, read from coord (any deployer when there is no such run: the API answers
//     404 and changes nothing).
//   - PUT, PATCH, DELETE /v1/tree/{path}: an admin whose scopes cover the path.
//   - Any other write: an admin of the whole tree.
//
// A request whose service cannot be told (a body that is not JSON, a service path that is
// not valid) is treated as naming no service: only a token of the whole tree may go on,
// and the API then answers it (400).
//
// The token check, the role and scope check and the audit (a record in coord at
// /berth/audit/<id> written before a write runs, 503 when it cannot be; completed after
// and published on berth.v1.events.audit.<result>.<service tokens>) are pkg/apiaccess's;
// this package supplies the rules above (rules.Kind and rules.Need) and names the realm
// (berth-controller) and metrics subsystem (controller).
//
// With no tokens the middleware is not installed: the API is open, as in `berth dev`.
package access

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthdev/berth/pkg/apiaccess"
	"github.com/berthdev/berth/pkg/apitoken"
	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	"github.com/berthdev/berth/services/task-controller/internal/model"
)

// AuditPrefix is where the audit records live in coord.
const AuditPrefix = apiaccess.AuditPrefix

// maxBody bounds the body the middleware reads to find a request's service; the API
// takes no more either.
const maxBody = 1 << 20

// Results of an audit record.
const (
	ResultAllowed = apiaccess.ResultAllowed
	ResultDenied  = apiaccess.ResultDenied
)

// Store is the part of coord the middleware uses.
type Store interface {
	Get(ctx context.Context, path string, opts ...coordclient.GetOption) (*coordclient.Node, error)
	Put(ctx context.Context, path string, value []byte, opts ...coordclient.PutOption) (*coordclient.PutResult, error)
}

// Config configures New.
type Config struct {
	// Tokens are the tokens that may use the API. Required (non-empty).
	Tokens *apitoken.Set
	// Coord reads the runs whose service a request acts on. Required.
	Coord Store
	// Audit receives the audit records; nil means Coord.
	Audit Store
	// Bus publishes the audit events; nil publishes none.
	Bus *natsbus.Bus
	// Source is the events' ce-source; Replica names the replica in the records.
	Source, Replica string
	// Logger receives failures to complete a record or publish its event; nil discards.
	Logger *slog.Logger
	// Registerer receives the metrics; nil does not export them.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Access is the middleware. Create it with New and put Wrap in front of the API.
type Access struct {
	guard *apiaccess.Guard
}

// New checks cfg and returns the middleware.
func New(cfg Config) (*Access, error) {
	if cfg.Tokens == nil || cfg.Tokens.Len() == 0 {
		return nil, errors.New("access: no tokens")
	}
	if cfg.Coord == nil {
		return nil, errors.New("access: no coord")
	}
	if cfg.Audit == nil {
		cfg.Audit = cfg.Coord
	}
	g, err := apiaccess.New(apiaccess.Config{Tokens: cfg.Tokens, Rules: rules{coord: cfg.Coord}, Audit: cfg.Audit, Bus: cfg.Bus,
		Source: cfg.Source, Replica: cfg.Replica, Realm: "berth-controller", Subsystem: "controller",
		Logger: cfg.Logger, Registerer: cfg.Registerer, Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	return &Access{guard: g}, nil
}

// Wrap returns next behind the middleware.
func (a *Access) Wrap(next http.Handler) http.Handler { return a.guard.Wrap(next) }

// rules are the controller API's rules for apiaccess.
type rules struct {
	coord Store
}

// Kind guards every route under /v1; every method but GET, HEAD and OPTIONS writes.
func (rules) Kind(r *http.Request) apiaccess.Kind {
	if r.URL.Path != "/v1" && !strings.HasPrefix(r.URL.Path, "/v1/") {
		return apiaccess.Open
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return apiaccess.Read
	}
	return apiaccess.Write
}

// Need finds the service a write acts on and the role it needs; AnyScope when any scope
// may go on (a run that does not exist: the API answers 404 and changes nothing); a
// *apiaccess.Denial when the request cannot be looked at.
func (ru rules) Need(r *http.Request) (apiaccess.Need, error) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/"), "/")
	switch {
	case r.Method == http.MethodPost && len(parts) == 1 && (parts[0] == "deployments" || parts[0] == "tasks"):
		svc, err := bodyService(r)
		return apiaccess.Need{Service: svc, Role: apitoken.Deployer}, err
	case r.Method == http.MethodPost && len(parts) == 3 && (parts[0] == "deployments" || parts[0] == "tasks"):
		svc, found, err := ru.runService(r.Context(), parts[0], parts[1])
		return apiaccess.Need{Service: svc, Role: apitoken.Deployer, AnyScope: !found && err == nil}, err
	case (r.Method == http.MethodPut || r.Method == http.MethodPatch || r.Method == http.MethodDelete) && len(parts) >= 2 && parts[0] == "tree":
		return apiaccess.Need{Service: validService(strings.Join(parts[1:], "/")), Role: apitoken.Admin}, nil
	}
	return apiaccess.Need{Role: apitoken.Admin}, nil
}

// validService returns s, trimmed of slashes, when it is a valid service path, else "".
func validService(s string) string {
	s = strings.Trim(s, "/")
	if model.CheckService(s) != nil {
		return ""
	}
	return s
}

// bodyService reads the request's JSON body (bounded; it is put back for the API) and
// returns its "service".
func bodyService(r *http.Request) (string, error) {
	if r.ContentLength > maxBody {
		return "", &apiaccess.Denial{Status: http.StatusRequestEntityTooLarge, Code: "invalid_argument", Reason: fmt.Sprintf("body over %d bytes", maxBody)}
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return "", &apiaccess.Denial{Status: http.StatusBadRequest, Code: "invalid_argument", Reason: "read body: " + err.Error()}
	}
	if len(b) > maxBody {
		return "", &apiaccess.Denial{Status: http.StatusRequestEntityTooLarge, Code: "invalid_argument", Reason: fmt.Sprintf("body over %d bytes", maxBody)}
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	var body struct {
		Service json.RawMessage `json:"service"`
	}
	if json.Unmarshal(b, &body) != nil {
		return "", nil
	}
	var s string
	if json.Unmarshal(body.Service, &s) != nil {
		return "", nil
	}
	return validService(s), nil
}

// runService reads the service of a deployment or task from coord; found is false when
// the run does not exist (or its id is not one).
func (ru rules) runService(ctx context.Context, kind, id string) (service string, found bool, err error) {
	if model.CheckID(id) != nil {
		return "", false, nil
	}
	path := model.DeploymentPath(id)
	if kind == "tasks" {
		path = model.TaskPath(id)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := ru.coord.Get(ctx, path)
	if errors.Is(err, coordclient.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, &apiaccess.Denial{Status: http.StatusServiceUnavailable, Code: "unavailable", Reason: fmt.Sprintf("read %s to check its service: %v", id, err)}
	}
	var svc string
	if kind == "tasks" {
		t := &controllerv1.Task{}
		err = model.Unmarshal(n.Value, t)
		svc = t.GetService()
	} else {
		d := &controllerv1.Deployment{}
		err = model.Unmarshal(n.Value, d)
		svc = d.GetService()
	}
	if err != nil {
		return "", true, &apiaccess.Denial{Status: http.StatusInternalServerError, Code: "internal", Reason: fmt.Sprintf("read %s to check its service: %v", id, err)}
	}
	return validService(svc), true, nil
}
