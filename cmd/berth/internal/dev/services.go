package dev

import (
	"context"

	"github.com/berthdev/berth/pkg/run"
)

// service is one entry of what berth dev runs. start prepares the service, adds its
// long-lived parts to g and may call g.Start and wait for them to be ready (the services
// after it can then rely on it). When start fails, berth dev stops every part in g.
type service struct {
	name  string
	start func(ctx context.Context, e *env, g *run.Group) error
}

// services is what berth dev runs, in start order; it stops in the reverse order. Each
// service's issue appends its entry here.
var services = []service{
	{name: "nats", start: startNATS},
	{name: "coord", start: startCoord},
	{name: "containers", start: startContainers},
	{name: "cmdb-sync", start: startCMDBSync},
	{name: "scheduler", start: startScheduler},
	{name: "agent", start: startAgent},
	{name: "name-service", start: startNames},
	{name: "controller", start: startController},
	{name: "artifacts", start: startArtifacts},
	{name: "admin", start: startAdmin},
	{name: "demo", start: startDemo},
}
