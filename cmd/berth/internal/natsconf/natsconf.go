// Package natsconf writes the nats-server configuration of a secured Berth installation
// (DESIGN §4, §10): TLS with client certificates from a `berth certs init` directory, and
// one nkey user per service — one per agent host — whose publish and subscribe
// permissions are derived from proto/subjects: the controller sends steps to every
// agent's step subject, an agent only receives its own host's steps and only publishes
// progress, results, instance events and its own host's template events, and so on.
//
// Every user also gets its own reply inbox (_INBOX_<user>.>), so that no service can read
// the replies to another's requests; services set the matching natsbus inbox prefix
// (nats_auth.inbox_prefix). Servers of requests (agents, the scheduler, the image
// builder) answer through allow_responses, which lets them publish to the reply subject
// of a request they received and nowhere else.
package natsconf

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nkeys"

	"github.com/berthdev/berth/pkg/certs"
	"github.com/berthdev/berth/proto/subjects"
)

// User is one NATS user: a Berth service (or one agent host) and what it may do.
type User struct {
	// Name is the user's name: the service (controller), agent-<host> or berth (the CLI).
	Name string `json:"name"`
	// Cert is the certificate of `berth certs init` the service presents (agent for every
	// agent host).
	Cert string `json:"cert"`
	// Publish and Subscribe are the subjects it may publish and subscribe to (wildcards
	// allowed); its inbox is in Subscribe.
	Publish   []string `json:"publish"`
	Subscribe []string `json:"subscribe"`
	// AllowResponses lets it answer the requests it receives (publish once to their reply
	// subject).
	AllowResponses bool `json:"allow_responses"`
	// Inbox is the prefix of its reply subjects (natsbus InboxPrefix).
	Inbox string `json:"inbox"`
}

// The JetStream streams and bucket the permissions name.
var (
	namesStream = "KV_" + subjects.NamesBucket
	namesKV     = "$KV." + subjects.NamesBucket + ".>"
)

// jsInfo is the JetStream account info request every JetStream client makes.
const jsInfo = "$JS.API.INFO"

// streamAdmin lets a user create, update and read a stream's configuration.
func streamAdmin(stream string) []string {
	return []string{"$JS.API.STREAM.CREATE." + stream, "$JS.API.STREAM.UPDATE." + stream, "$JS.API.STREAM.INFO." + stream}
}

// consumer lets a user read a stream through its own consumers: create (ephemeral,
// ordered or durable), read the info of, delete and pull from them, get messages directly,
// and acknowledge and answer flow control. It cannot create, change, purge or delete the
// stream.
func consumer(stream string) []string {
	return []string{
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.CONSUMER.CREATE." + stream, "$JS.API.CONSUMER.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.DURABLE.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.INFO." + stream + ".>", "$JS.API.CONSUMER.DELETE." + stream + ".>",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".>",
		"$JS.API.DIRECT.GET." + stream, "$JS.API.DIRECT.GET." + stream + ".>", "$JS.API.STREAM.MSG.GET." + stream,
		"$JS.ACK." + stream + ".>", "$JS.FC." + stream + ".>",
	}
}

// Inbox is the reply prefix of a user.
func Inbox(user string) string { return "_INBOX_" + user }

// replaceLast replaces the last token of a wildcard subject: TemplateEvents
// (berth.v1.events.template.*.*) with a host gives berth.v1.events.template.*.<host>.
func replaceLast(wildcard, tok string) string {
	i := strings.LastIndexByte(wildcard, '.')
	return wildcard[:i+1] + tok
}

// domainEvents is every event of a domain (berth.v1.events.<domain>.>).
func domainEvents(domain string) string {
	return strings.TrimSuffix(subjects.AllEvents, ">") + domain + ".>"
}

// Users returns the users of an installation with the given agent hosts, in a fixed order:
// controller, scheduler, image-builder, cmdb-sync, name-service, berth, then agent-<host>
// for each host.
func Users(agentHosts []string) ([]User, error) {
	seen := map[string]bool{}
	for _, h := range agentHosts {
		if err := subjects.Host(h); err != nil {
			return nil, fmt.Errorf("agent host %q: %w", h, err)
		}
		if strings.ContainsAny(h, `/\`) {
			return nil, fmt.Errorf("agent host %q: contains a slash (it names the user's seed file)", h)
		}
		if seen[h] {
			return nil, fmt.Errorf("agent host %q: listed twice", h)
		}
		seen[h] = true
	}
	mk := func(name, cert string, pub, sub []string, responses bool) User {
		pub = append([]string{jsInfo}, pub...)
		sub = append([]string{Inbox(name) + ".>"}, sub...)
		return User{Name: name, Cert: cert, Publish: dedupe(pub), Subscribe: dedupe(sub), AllowResponses: responses, Inbox: Inbox(name)}
	}
	users := []User{
		// The controller dispatches steps to every agent, asks the builder and the
		// scheduler, publishes deploy, task and audit events, creates the streams, hears
		// every step's progress and result, and reads the event log (the scheduler's
		// alloc.rescheduled events, whose replacements it deploys).
		mk("controller", "controller", slices.Concat(
			[]string{subjects.AgentSteps, domainEvents(subjects.DomainDeploy), domainEvents(subjects.DomainTask), domainEvents(subjects.DomainAudit),
				subjects.RPCBuild, subjects.RPCPlace, subjects.RPCRelease, subjects.WorkBuild, subjects.WorkPlace},
			streamAdmin(subjects.StreamEvents), streamAdmin(subjects.StreamWork), consumer(subjects.StreamEvents)),
			[]string{subjects.AgentProgress, subjects.AgentResults}, false),
		// The scheduler answers placements and releases, works the placement queue and
		// publishes allocation events.
		mk("scheduler", "scheduler", slices.Concat([]string{domainEvents(subjects.DomainAlloc)}, consumer(subjects.StreamWork)),
			[]string{subjects.RPCPlace, subjects.RPCRelease}, true),
		// The image builder answers builds, works the build queue and publishes image
		// events.
		mk("image-builder", "image-builder", slices.Concat([]string{domainEvents(subjects.DomainImage)}, consumer(subjects.StreamWork)),
			[]string{subjects.RPCBuild}, true),
		// cmdb-sync publishes host events.
		mk("cmdb-sync", "cmdb-sync", []string{domainEvents(subjects.DomainHost)}, nil, false),
		// The name service publishes views (subject and bucket) and instance events.
		mk("name-service", "name-service", slices.Concat([]string{subjects.NamesViews, namesKV, domainEvents(subjects.DomainInstance)},
			streamAdmin(namesStream), consumer(namesStream)), nil, false),
		// The berth CLI reads events, asks for builds and sends an agent a step by hand
		// (berth agent step), hearing that step's progress and result on one
		// subscription (berth.v1.agent.*.<task>): an operator's identity.
		mk("berth", "berth", slices.Concat([]string{subjects.RPCBuild, subjects.AgentSteps}, consumer(subjects.StreamEvents)),
			[]string{subjects.AgentProgress, subjects.AgentResults, replaceLast(subjects.AgentSteps, "*")}, false),
	}
	for _, h := range agentHosts {
		step, err := subjects.AgentStep(h)
		if err != nil {
			return nil, err
		}
		// An agent receives its own host's steps only, reports progress and results,
		// publishes instance events and its own host's template events, and reads the
		// service views.
		users = append(users, mk("agent-"+h, "agent", slices.Concat(
			[]string{subjects.AgentProgress, subjects.AgentResults, domainEvents(subjects.DomainInstance), replaceLast(subjects.TemplateEvents, h)},
			consumer(namesStream)),
			[]string{step, subjects.NamesViews}, true))
	}
	return users, nil
}

func dedupe(xs []string) []string {
	var out []string
	for _, x := range xs {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// Options configures Write.
type Options struct {
	// Dir is a `berth certs init` directory; it must hold ca.crt, nats.crt and nats.key.
	// The server configuration is written there (nats-server.conf) and the users' seeds
	// and environment files under Dir/nats. Required.
	Dir string
	// Path is where Dir is on the machines that read the files (written into the server
	// configuration and the environment files); empty means Dir made absolute.
	Path string
	// Listen is the server's client address; empty means 0.0.0.0:4222.
	Listen string
	// StoreDir is JetStream's store directory; empty means /data/jetstream.
	StoreDir string
	// AgentHosts get one user each (agent-<host>).
	AgentHosts []string
	// Force replaces the existing seeds (every service must then get its new seed);
	// otherwise a user that already has a seed keeps it.
	Force bool
}

// Written is one file Write wrote or kept.
type Written struct {
	Path string      `json:"path"`
	Mode fs.FileMode `json:"mode"`
	What string      `json:"what"`
	User string      `json:"user,omitempty"`
	// PublicKey is a user's nkey.
	PublicKey string `json:"public_key,omitempty"`
	// Kept is set for a seed that existed and was kept.
	Kept bool `json:"kept,omitempty"`
}

// ConfFile is the name of the server configuration Write writes.
const ConfFile = "nats-server.conf"

// Write writes the server configuration, one nkey seed per user (Dir/nats/<user>.nk,
// 0600) and one environment file per user (Dir/nats/<user>.env: the BERTH_NATS_* settings
// of that service). It checks everything before writing anything.
func Write(opts Options) ([]Written, error) {
	if strings.TrimSpace(opts.Dir) == "" {
		return nil, errors.New("nats config: dir: required")
	}
	for _, f := range []string{certs.CACertFile, "nats.crt", "nats.key"} {
		if _, err := os.Stat(filepath.Join(opts.Dir, f)); err != nil {
			return nil, fmt.Errorf("nats config: %w (run `berth certs init --dir %s` first)", err, opts.Dir)
		}
	}
	path := opts.Path
	if path == "" {
		abs, err := filepath.Abs(opts.Dir)
		if err != nil {
			return nil, fmt.Errorf("nats config: %w", err)
		}
		path = abs
	}
	if strings.ContainsAny(path, "\"\\\n") {
		return nil, fmt.Errorf("nats config: path %q: quotes, backslashes and newlines are not allowed", path)
	}
	if opts.Listen == "" {
		opts.Listen = "0.0.0.0:4222"
	}
	if opts.StoreDir == "" {
		opts.StoreDir = "/data/jetstream"
	}
	if host, port, err := net.SplitHostPort(opts.Listen); err != nil || !validListenHost(host) || !validPort(port) {
		return nil, fmt.Errorf("nats config: listen %q: want host:port with an IP address or host name and a port from 1 to 65535 (or -1)", opts.Listen)
	}
	for _, v := range []struct{ name, v string }{{"listen", opts.Listen}, {"store dir", opts.StoreDir}} {
		if strings.ContainsAny(v.v, "\"\\\n") {
			return nil, fmt.Errorf("nats config: %s %q: quotes, backslashes and newlines are not allowed", v.name, v.v)
		}
	}
	users, err := Users(opts.AgentHosts)
	if err != nil {
		return nil, fmt.Errorf("nats config: %w", err)
	}
	seedDir := filepath.Join(opts.Dir, "nats")
	type file struct {
		w    Written
		data []byte
	}
	var files []file
	keys := map[string]string{}
	for _, u := range users {
		p := filepath.Join(seedDir, u.Name+".nk")
		var kp nkeys.KeyPair
		kept := false
		if b, err := os.ReadFile(p); err == nil && !opts.Force {
			if kp, err = nkeys.FromSeed(b); err != nil {
				return nil, fmt.Errorf("nats config: seed %s: %w (remove it or pass --force)", p, err)
			}
			kept = true
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("nats config: %w", err)
		} else if kp, err = nkeys.CreateUser(); err != nil {
			return nil, fmt.Errorf("nats config: user %s: %w", u.Name, err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, fmt.Errorf("nats config: user %s: %w", u.Name, err)
		}
		seed, err := kp.Seed()
		if err != nil {
			return nil, fmt.Errorf("nats config: user %s: %w", u.Name, err)
		}
		keys[u.Name] = pub
		files = append(files, file{Written{Path: p, Mode: 0o600, What: "nkey seed", User: u.Name, PublicKey: pub, Kept: kept}, append(seed, '\n')})
		files = append(files, file{Written{Path: filepath.Join(seedDir, u.Name+".env"), Mode: 0o644, What: "environment", User: u.Name},
			envFile(path, u)})
	}
	conf := Render(users, keys, path, opts.Listen, opts.StoreDir)
	files = append([]file{{Written{Path: filepath.Join(opts.Dir, ConfFile), Mode: 0o644, What: "nats-server configuration"}, conf}}, files...)
	if err := os.MkdirAll(seedDir, 0o700); err != nil {
		return nil, fmt.Errorf("nats config: %w", err)
	}
	var out []Written
	for _, f := range files {
		if !f.w.Kept {
			if err := writeFileAtomic(f.w.Path, f.data, f.w.Mode); err != nil {
				return out, fmt.Errorf("nats config: %w", err)
			}
		}
		out = append(out, f.w)
	}
	return out, nil
}

// validListenHost reports whether host is empty (every address), an IP address or a host
// name.
func validListenHost(host string) bool {
	return host == "" || net.ParseIP(host) != nil || strings.Trim(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") == ""
}

// validPort reports whether port is 1 to 65535, or -1 (nats-server picks one).
func validPort(port string) bool {
	n, err := strconv.ParseUint(port, 10, 16)
	return err == nil && n > 0 || port == "-1"
}

// envFile is the BERTH_NATS_* settings of a user's service, for an env_file of compose or
// a systemd EnvironmentFile.
func envFile(path string, u User) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# NATS settings of %s, written by berth certs nats-config.\n", u.Name)
	fmt.Fprintf(&b, "BERTH_NATS_TRUSTED_CA_FILE=%s\n", filepath.Join(path, certs.CACertFile))
	fmt.Fprintf(&b, "BERTH_NATS_CERT_FILE=%s\n", filepath.Join(path, u.Cert+".crt"))
	fmt.Fprintf(&b, "BERTH_NATS_KEY_FILE=%s\n", filepath.Join(path, u.Cert+".key"))
	fmt.Fprintf(&b, "BERTH_NATS_NKEY_SEED_FILE=%s\n", filepath.Join(path, "nats", u.Name+".nk"))
	fmt.Fprintf(&b, "BERTH_NATS_INBOX_PREFIX=%s\n", u.Inbox)
	return []byte(b.String())
}

// Render returns the nats-server configuration: the listen address, JetStream, TLS that
// requires a client certificate signed by the CA, and the users with their nkeys (keys,
// by user name) and permissions. path is the certificates' directory on the server.
func Render(users []User, keys map[string]string, path, listen, storeDir string) []byte {
	var b strings.Builder
	b.WriteString("# nats-server configuration of a Berth installation, written by `berth certs nats-config`.\n")
	b.WriteString("# TLS with client certificates is required; every service logs in with its nkey and may\n")
	b.WriteString("# only publish and subscribe to its own subjects (proto/subjects).\n\n")
	fmt.Fprintf(&b, "listen: %q\n\n", listen)
	fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n}\n\n", storeDir)
	b.WriteString("tls {\n")
	fmt.Fprintf(&b, "  cert_file: %q\n", filepath.Join(path, "nats.crt"))
	fmt.Fprintf(&b, "  key_file: %q\n", filepath.Join(path, "nats.key"))
	fmt.Fprintf(&b, "  ca_file: %q\n", filepath.Join(path, certs.CACertFile))
	b.WriteString("  verify: true\n  timeout: 5\n}\n\n")
	b.WriteString("authorization {\n  users: [\n")
	for _, u := range users {
		fmt.Fprintf(&b, "    # %s\n", u.Name)
		fmt.Fprintf(&b, "    {\n      nkey: %q\n      permissions: {\n", keys[u.Name])
		fmt.Fprintf(&b, "        publish: { allow: %s }\n", list(u.Publish))
		fmt.Fprintf(&b, "        subscribe: { allow: %s }\n", list(u.Subscribe))
		if u.AllowResponses {
			b.WriteString("        allow_responses: true\n")
		}
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	return []byte(b.String())
}

func list(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// writeFileAtomic writes data to a temporary file with mode and renames it into place.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	if err := f.Chmod(mode); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
