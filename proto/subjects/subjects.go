// Package subjects names every NATS subject and stream Berth uses (DESIGN §4). Each subject
// has a wildcard form for subscribers and a format form (a function) for publishers.
//
// Subjects are berth.v1.<domain>.<verb or entity>.<ids...>. A service path becomes tokens
// (hotel/search → hotel.search) and always comes last, so ">" subscribes to a subtree:
// DeployEvent("*", "hotel") + ".>" is every deploy event of the hotel tree.
package subjects

import (
	"errors"
	"fmt"
	"strings"
)

// Streams.
const (
	// StreamEvents is the JetStream stream holding every event (berth.v1.events.>).
	StreamEvents = "BERTH_EVENTS"
	// StreamWork is the work-queue stream of commands that must survive a restart of their
	// consumer (berth.v1.work.>).
	StreamWork = "BERTH_WORK"
	// NamesBucket is the JetStream key-value bucket holding each service's current view.
	NamesBucket = "berth-names"
)

// Wildcard forms, for subscribers.
const (
	// AllEvents is every event; the subjects of StreamEvents.
	AllEvents = "berth.v1.events.>"
	// DeployEvents is every deploy event: berth.v1.events.deploy.<type>.<service tokens>.
	DeployEvents = "berth.v1.events.deploy.*.>"
	// TaskEvents is every task event: berth.v1.events.task.<type>.<task id>.
	TaskEvents = "berth.v1.events.task.*.*"
	// HostEvents is every host event: berth.v1.events.host.<type>.<host>.
	HostEvents = "berth.v1.events.host.*.*"
	// InstanceEvents is every instance event: berth.v1.events.instance.<type>.<service tokens>.
	InstanceEvents = "berth.v1.events.instance.*.>"
	// ImageEvents is every image event: berth.v1.events.image.<type>.<service tokens>.
	ImageEvents = "berth.v1.events.image.*.>"
	// TemplateEvents is every template render or reload event:
	// berth.v1.events.template.<type>.<host>.
	TemplateEvents = "berth.v1.events.template.*.*"
	// AllocEvents is every allocation event: berth.v1.events.alloc.<type>.<service tokens>
	// (placed, failed, released, rescheduled, lost).
	AllocEvents = "berth.v1.events.alloc.*.>"
	// AuditEvents is every audit record: berth.v1.events.audit.<result>.<service tokens>.
	AuditEvents = "berth.v1.events.audit.*.>"

	// AllWork is the subjects of StreamWork.
	AllWork = "berth.v1.work.>"
	// WorkBuild is the work-queue subject of image builds.
	WorkBuild = "berth.v1.work.build"
	// WorkPlace is the work-queue subject of placement requests.
	WorkPlace = "berth.v1.work.place"

	// RPCBuild is the request/reply subject of image builds. It differs from WorkBuild because
	// a core request to a subject a stream captures would be answered by the stream's ack.
	RPCBuild = "berth.v1.rpc.build"
	// RPCPlace is the request/reply subject of placement requests.
	RPCPlace = "berth.v1.rpc.place"
	// RPCRelease is the request/reply subject of allocation releases.
	RPCRelease = "berth.v1.rpc.release"

	// AgentSteps is every step request to any agent: berth.v1.agent.<host>.step.
	AgentSteps = "berth.v1.agent.*.step"
	// AgentProgress is every step's progress: berth.v1.agent.progress.<task>.
	AgentProgress = "berth.v1.agent.progress.*"
	// AgentResults is every step's result: berth.v1.agent.result.<task>.
	AgentResults = "berth.v1.agent.result.*"

	// NamesViews is every service's view: berth.v1.names.view.<service tokens>.
	NamesViews = "berth.v1.names.view.>"
)

// Event types, the <type> token of event subjects. ce-type is "dev.berth.<domain>.<type>".
const (
	DomainDeploy   = "deploy"
	DomainTask     = "task"
	DomainHost     = "host"
	DomainInstance = "instance"
	DomainImage    = "image"
	DomainTemplate = "template"
	DomainAudit    = "audit"
	DomainAlloc    = "alloc"
)

// reserved tokens may not be used as a host id because they are subject tokens of their own
// at the same position (berth.v1.agent.progress.<task>).
var reserved = map[string]bool{"progress": true, "result": true}

// ErrBadToken is returned when an id or a service path cannot become subject tokens.
var ErrBadToken = errors.New("subjects: bad token")

// Token checks that s can be one subject token: non-empty, no dots, spaces, wildcards or
// control characters, and not starting with "$".
func Token(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrBadToken)
	}
	if strings.HasPrefix(s, "$") {
		return fmt.Errorf("%w: %q starts with $", ErrBadToken, s)
	}
	for _, r := range s {
		if r == '.' || r == '*' || r == '>' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("%w: %q contains %q", ErrBadToken, s, r)
		}
	}
	return nil
}

// MaxName is the length limit of a Name.
const MaxName = 63

// Name checks a host id or a datacenter name: 1 to MaxName ASCII letters, digits, '-' and
// '_', starting with a letter or a digit (a DNS label, with '_'). Such names are subject
// tokens, file names, DNS labels and shell words at once, so wherever one travels it means
// only itself.
func Name(s string) error {
	if err := Token(s); err != nil {
		return err
	}
	if len(s) > MaxName {
		return fmt.Errorf("%w: %.20q... is %d bytes, want at most %d", ErrBadToken, s, len(s), MaxName)
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case (r == '-' || r == '_') && i > 0:
		default:
			return fmt.Errorf("%w: %q: want letters, digits, '-' and '_', starting with a letter or digit", ErrBadToken, s)
		}
	}
	return nil
}

// DC checks a datacenter name (see Name).
func DC(dc string) error {
	if err := Name(dc); err != nil {
		return fmt.Errorf("datacenter: %w", err)
	}
	return nil
}

// ServiceTokens turns a service path (hotel/search) into subject tokens (hotel.search).
func ServiceTokens(path string) (string, error) {
	path = strings.Trim(path, "/")
	if path == "" {
		return "", fmt.Errorf("%w: empty service path", ErrBadToken)
	}
	parts := strings.Split(path, "/")
	for _, p := range parts {
		if err := Token(p); err != nil {
			return "", fmt.Errorf("service path %q: %w", path, err)
		}
	}
	return strings.Join(parts, "."), nil
}

// ServicePath turns subject tokens (hotel.search) back into a service path (hotel/search).
func ServicePath(tokens string) string { return strings.ReplaceAll(tokens, ".", "/") }

// EventType is the CloudEvents type of an event: dev.berth.<domain>.<type>.
func EventType(domain, typ string) string { return "dev.berth." + domain + "." + typ }

// DeployEvent is the subject of a deploy event of the given type for a service path.
func DeployEvent(typ, service string) (string, error) {
	return serviceSubject("events.deploy", typ, service)
}

// InstanceEvent is the subject of an instance event.
func InstanceEvent(typ, service string) (string, error) {
	return serviceSubject("events.instance", typ, service)
}

// ImageEvent is the subject of an image event.
func ImageEvent(typ, service string) (string, error) {
	return serviceSubject("events.image", typ, service)
}

// AuditEvent is the subject of an audit record; result is allowed or denied. A request
// that names no service is recorded under NoService.
func AuditEvent(result, service string) (string, error) {
	return serviceSubject("events.audit", result, service)
}

// NoService stands for the service path of an audit record whose request names no service
// (berth.v1.events.audit.denied._). It is never a valid service path segment.
const NoService = "_"

// AllocEvent is the subject of an allocation event.
func AllocEvent(typ, service string) (string, error) {
	return serviceSubject("events.alloc", typ, service)
}

// TaskEvent is the subject of a task event.
func TaskEvent(typ, taskID string) (string, error) { return idSubject("events.task", typ, taskID) }

// HostEvent is the subject of a host event.
func HostEvent(typ, host string) (string, error) { return idSubject("events.host", typ, host) }

// TemplateEvent is the subject of a template render or reload event.
func TemplateEvent(typ, host string) (string, error) { return idSubject("events.template", typ, host) }

// AgentStep is the subject a controller sends a host's step requests to.
func AgentStep(host string) (string, error) {
	if err := Host(host); err != nil {
		return "", err
	}
	return "berth.v1.agent." + host + ".step", nil
}

// AgentProgressFor is the subject a step's progress is published on.
func AgentProgressFor(taskID string) (string, error) {
	if err := Token(taskID); err != nil {
		return "", fmt.Errorf("task id: %w", err)
	}
	return "berth.v1.agent.progress." + taskID, nil
}

// AgentResultFor is the subject a step's result is published on.
func AgentResultFor(taskID string) (string, error) {
	if err := Token(taskID); err != nil {
		return "", fmt.Errorf("task id: %w", err)
	}
	return "berth.v1.agent.result." + taskID, nil
}

// NamesView is the subject a service's view is published on.
func NamesView(service string) (string, error) {
	t, err := ServiceTokens(service)
	if err != nil {
		return "", err
	}
	return "berth.v1.names.view." + t, nil
}

// Host checks that a host id can be used in subjects.
func Host(host string) error {
	if err := Name(host); err != nil {
		return fmt.Errorf("host id: %w", err)
	}
	if reserved[host] {
		return fmt.Errorf("%w: host id %q is reserved", ErrBadToken, host)
	}
	return nil
}

func serviceSubject(prefix, typ, service string) (string, error) {
	if err := Token(typ); err != nil {
		return "", fmt.Errorf("event type: %w", err)
	}
	t, err := ServiceTokens(service)
	if err != nil {
		return "", err
	}
	return "berth.v1." + prefix + "." + typ + "." + t, nil
}

func idSubject(prefix, typ, id string) (string, error) {
	if err := Token(typ); err != nil {
		return "", fmt.Errorf("event type: %w", err)
	}
	if err := Token(id); err != nil {
		return "", fmt.Errorf("id: %w", err)
	}
	return "berth.v1." + prefix + "." + typ + "." + id, nil
}
