package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/berthdev/berth/pkg/coordclient"
	agentv1 "github.com/berthdev/berth/proto/agent/v1"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
	"github.com/berthdev/berth/services/task-controller/internal/model"
)

// defaultMaxContainers is a host's container cap when its record sets none (DESIGN §8).
const defaultMaxContainers = 64

// Resources are amounts of compute in a host view.
type Resources struct {
	CPUMillis   int64 `json:"cpu_millis"`
	MemoryBytes int64 `json:"memory_bytes"`
	DiskBytes   int64 `json:"disk_bytes"`
}

// HostView is one host of GET /v1/hosts: its inventory record, its agent's liveness node,
// and what its allocations hold and leave free.
type HostView struct {
	// ID is the host id.
	ID string `json:"id"`
	// InInventory is false for a host whose agent is alive but that cmdb-sync has not
	// recorded (or no longer records).
	InInventory bool `json:"in_inventory"`
	// Host is the protojson of /berth/hosts/<id> (inventory.v1.Host).
	Host json.RawMessage `json:"host,omitempty"`
	// Alive says whether the agent's ephemeral node /berth/alive/<id> exists.
	Alive bool `json:"alive"`
	// Agent is the protojson of that node (agent.v1.AgentInfo).
	Agent json.RawMessage `json:"agent,omitempty"`
	// Allocations counts the allocations under /berth/alloc/<id>/.
	Allocations int `json:"allocations"`
	// MaxContainers is the host's cap (64 when the record sets none).
	MaxContainers int `json:"max_containers"`
	// Allocated is the sum of the allocations' resources.
	Allocated Resources `json:"allocated"`
	// Free is the host's schedulable resources less Allocated (never below 0), and the
	// containers left under the cap.
	Free Resources `json:"free"`
	// FreeContainers is MaxContainers less Allocations (never below 0).
	FreeContainers int `json:"free_containers"`
	// Services are the services with allocations on the host, sorted.
	Services []string `json:"services,omitempty"`
}

// HostsView is the body of GET /v1/hosts.
type HostsView struct {
	Hosts []HostView `json:"hosts"`
	// DCs are the datacenters of the listed hosts, sorted.
	DCs []string `json:"dcs"`
}

// listHosts answers GET /v1/hosts?dc=: the inventory joined with liveness and allocations.
func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) error {
	dc := r.URL.Query().Get("dc")
	if dc != "" && subjects.DC(dc) != nil {
		return apiErr(http.StatusBadRequest, "invalid_argument", "dc", "dc %.40q: want a datacenter name (letters, digits, '-' and '_')", dc)
	}
	ctx := r.Context()
	var lists [3]*coordclient.ListResult
	for i, prefix := range []string{model.HostsPrefix, model.AlivePrefix, model.AllocPrefix} {
		var opts []coordclient.ListOption
		if prefix == model.AllocPrefix {
			opts = append(opts, coordclient.Recursive())
		}
		res, err := s.coord.List(ctx, prefix, opts...)
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		lists[i] = res
	}
	view := BuildHosts(lists[0].Nodes, lists[1].Nodes, lists[2].Nodes)
	if dc != "" {
		view.Hosts = slices.DeleteFunc(view.Hosts, func(h HostView) bool { return hostDC(h) != dc })
	}
	b, err := json.Marshal(view)
	if err != nil {
		return err
	}
	return writeRaw(w, http.StatusOK, b)
}

// hostDC is the datacenter of a host view: the inventory's, else the agent's.
func hostDC(h HostView) string {
	var dc struct {
		DC string `json:"dc"`
	}
	if h.Host != nil && json.Unmarshal(h.Host, &dc) == nil && dc.DC != "" {
		return dc.DC
	}
	if h.Agent != nil && json.Unmarshal(h.Agent, &dc) == nil {
		return dc.DC
	}
	return ""
}

// BuildHosts joins the children of /berth/hosts and /berth/alive with the subtree of
// /berth/alloc (guards at /berth/alloc/<host>, allocations one level below). Nodes whose
// value does not decode are skipped. Hosts come sorted by id.
func BuildHosts(hosts, alive, alloc []coordclient.Node) HostsView {
	byID := map[string]*HostView{}
	get := func(id string) *HostView {
		h := byID[id]
		if h == nil {
			h = &HostView{ID: id, MaxContainers: defaultMaxContainers}
			byID[id] = h
		}
		return h
	}
	records := map[string]*inventoryv1.Host{}
	for _, n := range hosts {
		id, ok := childOf(model.HostsPrefix, n.Path)
		if !ok || n.Version == 0 {
			continue
		}
		rec := &inventoryv1.Host{}
		if model.Unmarshal(n.Value, rec) != nil {
			continue
		}
		h := get(id)
		h.InInventory, h.Host = true, json.RawMessage(model.MustMarshal(rec))
		if rec.GetMaxContainers() > 0 {
			h.MaxContainers = int(rec.GetMaxContainers())
		}
		records[id] = rec
	}
	for _, n := range alive {
		id, ok := childOf(model.AlivePrefix, n.Path)
		if !ok || n.Version == 0 {
			continue
		}
		info := &agentv1.AgentInfo{}
		if model.Unmarshal(n.Value, info) != nil {
			continue
		}
		h := get(id)
		h.Alive, h.Agent = true, json.RawMessage(model.MustMarshal(info))
	}
	for _, n := range alloc {
		rest, ok := strings.CutPrefix(n.Path, model.AllocPrefix+"/")
		host, _, two := strings.Cut(rest, "/")
		if !ok || !two || n.Version == 0 || strings.Count(rest, "/") != 1 {
			continue
		}
		a := &inventoryv1.Allocation{}
		if model.Unmarshal(n.Value, a) != nil {
			continue
		}
		h := byID[host]
		if h == nil {
			// Allocations of a host that is neither in the inventory nor alive still hold
			// capacity somewhere: show the host.
			h = get(host)
		}
		h.Allocations++
		h.Allocated.CPUMillis += int64(a.GetResources().GetCpuMillis())
		h.Allocated.MemoryBytes += int64(a.GetResources().GetMemoryBytes())
		h.Allocated.DiskBytes += int64(a.GetResources().GetDiskBytes())
		if svc := a.GetService(); svc != "" && !slices.Contains(h.Services, svc) {
			h.Services = append(h.Services, svc)
		}
	}
	view := HostsView{Hosts: []HostView{}, DCs: []string{}}
	for id, h := range byID {
		rec := records[id]
		h.Free = Resources{
			CPUMillis:   max(0, int64(rec.GetCpuMillis())-h.Allocated.CPUMillis),
			MemoryBytes: max(0, int64(rec.GetMemoryBytes())-h.Allocated.MemoryBytes),
			DiskBytes:   max(0, int64(rec.GetDiskBytes())-h.Allocated.DiskBytes),
		}
		h.FreeContainers = max(0, h.MaxContainers-h.Allocations)
		slices.Sort(h.Services)
		view.Hosts = append(view.Hosts, *h)
		if dc := hostDC(*h); dc != "" && !slices.Contains(view.DCs, dc) {
			view.DCs = append(view.DCs, dc)
		}
	}
	slices.SortFunc(view.Hosts, func(a, b HostView) int { return strings.Compare(a.ID, b.ID) })
	slices.Sort(view.DCs)
	return view
}

// childOf returns the last segment of path when it is a direct child of prefix.
func childOf(prefix, path string) (string, bool) {
	id, ok := strings.CutPrefix(path, prefix+"/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", false
	}
	return id, true
}

// listInstances answers GET /v1/instances/{service}: the instances registered for the
// service (not those of the services below it), in id order.
func (s *Server) listInstances(w http.ResponseWriter, r *http.Request) error {
	svc := strings.Trim(r.PathValue("service"), "/")
	if err := model.CheckService(svc); err != nil {
		return apiErr(http.StatusBadRequest, "invalid_argument", "service", "%v", err)
	}
	dir := model.InstancesPrefix + "/" + svc
	res, err := s.coord.List(r.Context(), dir)
	if err != nil {
		return fmt.Errorf("list instances of %s: %w", svc, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `{"service":%q,"revision":%d,"instances":[`, svc, res.Revision)
	first := true
	for _, n := range res.Nodes {
		id, ok := childOf(dir, n.Path)
		if !ok || n.Version == 0 {
			continue
		}
		in := &namesv1.Instance{}
		if model.Unmarshal(n.Value, in) != nil {
			continue
		}
		if in.GetId() == "" {
			in.Id = id
		}
		if in.GetService() == "" {
			in.Service = svc
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		b.Write(model.MustMarshal(in))
	}
	b.WriteString("]}")
	return writeRaw(w, http.StatusOK, []byte(b.String()))
}
