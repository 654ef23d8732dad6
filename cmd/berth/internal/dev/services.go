package dev

import "context"

// service is one entry of what berth dev runs. start prepares the service (it may bind
// listeners and announce endpoints) and returns the parts to run; it must not leave
// goroutines behind when it fails.
type service struct {
	name  string
	start func(ctx context.Context, e *env) ([]part, error)
}

type part struct {
	name string
	run  func(ctx context.Context) error
}

// services is what berth dev runs, in start order; it stops in the reverse order. Each
// service's issue appends its entry here.
var services = []service{
	{name: "nats", start: startNATS},
}
