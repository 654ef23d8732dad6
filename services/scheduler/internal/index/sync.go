package index

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	inventoryv1 "github.com/berthdev/berth/proto/inventory/v1"
	"github.com/berthdev/berth/services/scheduler/internal/framework"
)

// The coord prefixes the index follows (DESIGN §3).
const (
	HostsPrefix = "/berth/hosts"
	AlivePrefix = "/berth/alive"
	AllocPrefix = "/berth/alloc"
)

var unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}

// kind is one followed prefix.
type kind int

const (
	kindHosts kind = iota
	kindAlive
	kindAlloc
	numKinds
)

func (k kind) prefix() string {
	return [...]string{HostsPrefix, AlivePrefix, AllocPrefix}[k]
}

// Synced reports whether every prefix has been listed at least once.
func (x *Index) Synced() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.synced >= int(numKinds)
}

// Sync keeps the index in step with coord until ctx ends: for each of the hosts, alive
// and alloc prefixes it lists the subtree, then watches it from the list's revision + 1,
// and lists again when the watch ends (its start revision was compacted, or an error).
// It returns nil when ctx ends; every goroutine it starts has exited by then.
func (x *Index) Sync(ctx context.Context, c *coordclient.Client, log *slog.Logger) error {
	var wg sync.WaitGroup
	for k := range numKinds {
		wg.Go(func() { x.follow(ctx, c, k, log) })
	}
	wg.Wait()
	return nil
}

func (x *Index) follow(ctx context.Context, c *coordclient.Client, k kind, log *slog.Logger) {
	first := true
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		list, err := c.List(ctx, k.prefix(), coordclient.Recursive())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("list for the scheduler index", "prefix", k.prefix(), "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		x.applySnapshot(k, list.Nodes, first, log)
		first = false
		wctx, cancel := context.WithCancel(ctx)
		for resp := range c.Watch(wctx, k.prefix(), list.Revision+1, coordclient.Recursive(), coordclient.RelistOnCompaction()) {
			switch {
			case resp.Err != nil:
				log.Warn("scheduler index watch ended, listing again", "prefix", k.prefix(), "err", resp.Err)
			case resp.Reset:
				x.applySnapshot(k, resp.Nodes, false, log)
			default:
				x.applyEvents(k, resp.Events, log)
			}
		}
		cancel()
	}
}

// hostOf splits a path under prefix into the host id and the rest ("" for the host's own
// node); ok is false for the prefix itself.
func hostOf(prefix, path string) (host, rest string, ok bool) {
	p, found := strings.CutPrefix(path, prefix+"/")
	if !found || p == "" {
		return "", "", false
	}
	host, rest, _ = strings.Cut(p, "/")
	return host, rest, true
}

func (x *Index) applySnapshot(k kind, nodes []coordclient.Node, first bool, log *slog.Logger) {
	x.mu.Lock()
	defer x.mu.Unlock()
	present := map[string]bool{}
	switch k {
	case kindHosts:
		for _, n := range nodes {
			host, rest, ok := hostOf(HostsPrefix, n.Path)
			if !ok || rest != "" || n.Version == 0 {
				continue
			}
			if x.putHostLocked(host, n, log) {
				present[host] = true
			}
		}
		for _, n := range x.all {
			if n.Known && !present[n.ID] {
				x.deleteHostLocked(n.ID)
			}
		}
	case kindAlive:
		for _, n := range nodes {
			if host, rest, ok := hostOf(AlivePrefix, n.Path); ok && rest == "" && n.Version > 0 {
				present[host] = true
			}
		}
		for _, n := range x.all {
			if n.Alive && !present[n.ID] {
				x.setAliveLocked(n.ID, false)
			}
		}
		for h := range present {
			x.setAliveLocked(h, true)
		}
	case kindAlloc:
		x.clearAllocsLocked()
		for _, n := range nodes {
			x.putAllocNodeLocked(n, log)
		}
	}
	if first {
		x.synced++
	}
	x.notifyLocked()
}

func (x *Index) applyEvents(k kind, evs []coordclient.Event, log *slog.Logger) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, ev := range evs {
		switch k {
		case kindHosts:
			host, rest, ok := hostOf(HostsPrefix, ev.Node.Path)
			if !ok || rest != "" {
				continue
			}
			if ev.Type == coordclient.EventDelete {
				x.deleteHostLocked(host)
			} else {
				x.putHostLocked(host, ev.Node, log)
			}
		case kindAlive:
			if host, rest, ok := hostOf(AlivePrefix, ev.Node.Path); ok && rest == "" {
				x.setAliveLocked(host, ev.Type == coordclient.EventPut)
			}
		case kindAlloc:
			if ev.Type == coordclient.EventPut {
				x.putAllocNodeLocked(ev.Node, log)
				continue
			}
			host, rest, ok := hostOf(AllocPrefix, ev.Node.Path)
			switch {
			case !ok:
			case rest == "":
				x.deleteGuardLocked(host)
			case !strings.Contains(rest, "/"):
				x.removeAllocLocked(host, rest)
			}
		}
	}
	x.notifyLocked()
}

func (x *Index) putHostLocked(id string, n coordclient.Node, log *slog.Logger) bool {
	h := &inventoryv1.Host{}
	if err := unmarshal.Unmarshal(n.Value, h); err != nil {
		log.Warn("host record ignored", "path", n.Path, "err", err)
		return false
	}
	if h.GetId() != id {
		log.Warn("host record ignored", "path", n.Path, "err", fmt.Sprintf("id %q differs from the path's %q", h.GetId(), id))
		return false
	}
	x.setHostLocked(h, n.ModRev)
	return true
}

// putAllocNodeLocked applies a node under AllocPrefix: a guard or an allocation.
func (x *Index) putAllocNodeLocked(n coordclient.Node, log *slog.Logger) {
	host, rest, ok := hostOf(AllocPrefix, n.Path)
	if !ok || n.Version == 0 {
		return
	}
	if rest == "" {
		x.setGuardLocked(host, n.ModRev)
		return
	}
	if strings.Contains(rest, "/") {
		return
	}
	// Allocations are written once (a replacement is a new allocation), so one the index
	// holds already — this replica's own commits — need not be decoded again.
	if h, ok := x.hosts[host]; ok && slices.ContainsFunc(h.Allocs, func(a framework.AllocInfo) bool { return a.ID == rest }) {
		return
	}
	a, err := DecodeAllocation(n.Value)
	if err != nil {
		log.Warn("allocation ignored", "path", n.Path, "err", err)
		return
	}
	if a.GetId() != rest || a.GetHost() != host {
		log.Warn("allocation ignored", "path", n.Path, "err", "its id or host differs from its path")
		return
	}
	x.addAllocLocked(host, AllocInfoOf(a))
}

// DecodeAllocation reads an Allocation's protojson.
func DecodeAllocation(b []byte) (*inventoryv1.Allocation, error) {
	a := &inventoryv1.Allocation{}
	if err := unmarshal.Unmarshal(b, a); err != nil {
		return nil, err
	}
	return a, nil
}

// AllocInfoOf is what the index keeps of a.
func AllocInfoOf(a *inventoryv1.Allocation) framework.AllocInfo {
	ip, _ := netip.ParseAddr(a.GetIp())
	r := a.GetResources()
	return framework.AllocInfo{
		ID: a.GetId(), Service: a.GetService(), Deployment: a.GetDeploymentId(), IP: ip.Unmap(),
		Resources: framework.Resources{
			CPU: clampInt64(r.GetCpuMillis()), Memory: clampInt64(r.GetMemoryBytes()), Disk: clampInt64(r.GetDiskBytes()),
		},
	}
}
