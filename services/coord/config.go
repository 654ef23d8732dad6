package coord

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Cluster states for Config.InitialClusterState.
const (
	ClusterStateNew      = "new"
	ClusterStateExisting = "existing"
)

// TLSFiles names the PEM files of one side of a link. With Cert and Key set the listener
// serves TLS; with TrustedCA set as well it requires and verifies client certificates
// signed by that CA (mutual TLS).
type TLSFiles struct {
	// Cert is the certificate file.
	Cert string
	// Key is the private key file.
	Key string
	// TrustedCA is the CA bundle that client (and, for peers, server) certificates must
	// chain to.
	TrustedCA string
}

func (t TLSFiles) enabled() bool { return t.Cert != "" || t.Key != "" || t.TrustedCA != "" }

// Config is berth-coord's configuration. Zero values take the defaults in DefaultConfig.
type Config struct {
	// Name is this member's name; its member id is derived from it (MemberID).
	Name string
	// DataDir holds the Raft log and snapshots.
	DataDir string
	// ListenClient is host:port of the client gRPC API.
	ListenClient string
	// AdvertiseClient is the client address announced to the other members (so that a
	// follower can point a keepalive stream at the leader). Default ListenClient.
	AdvertiseClient string
	// ListenPeer is host:port of the Raft peer service.
	ListenPeer string
	// ListenMetrics is host:port of /metrics, /healthz and /readyz; empty disables it.
	ListenMetrics string
	// InitialCluster lists the members as name=peer-host:port, comma separated; it must
	// include this member.
	InitialCluster string
	// InitialClusterState is "new" to bootstrap a cluster or "existing" to join one (after
	// MemberAdd).
	InitialClusterState string
	// ClusterID overrides the cluster id derived from InitialCluster (needed only to join a
	// cluster whose initial cluster is not InitialCluster less this member).
	ClusterID uint64
	// HeartbeatInterval is the Raft heartbeat (tick) interval.
	HeartbeatInterval time.Duration
	// ElectionTimeout is the Raft election timeout; a multiple of HeartbeatInterval.
	ElectionTimeout time.Duration
	// RequestTimeout bounds how long a write or a linearizable read waits for the cluster
	// before it fails with UNAVAILABLE.
	RequestTimeout time.Duration
	// HistoryWindow is how many watch events each member keeps for watchers that start from
	// an older revision.
	HistoryWindow int
	// WatcherBuffer is how many events a watcher may fall behind before it is cancelled;
	// a single revision is always admitted to a watcher that has nothing pending, whatever
	// its size.
	WatcherBuffer int
	// MaxClockSkew is how far the members' wall clocks may disagree. Session deadlines are
	// recorded on the leader's wall clock; a new leader gives every session its recorded
	// deadline plus MaxClockSkew.
	MaxClockSkew time.Duration
	// SnapshotEntries is how many applied entries trigger a Raft snapshot.
	SnapshotEntries uint64
	// ClientTLS secures the client API.
	ClientTLS TLSFiles
	// PeerTLS secures the peer links (both directions).
	PeerTLS TLSFiles
	// HTTPTLS serves /metrics, /healthz and /readyz (and pprof) over HTTPS; with TrustedCA,
	// scrapers need a certificate of that CA. Flags --http-cert-file, --http-key-file,
	// --http-trusted-ca-file, named like every Berth service's.
	HTTPTLS TLSFiles

	// Listeners, when set, are used instead of listening on the addresses above (tests
	// listen on port 0 first to learn the ports).
	ClientListener, PeerListener, MetricsListener net.Listener

	// localLinearizableReads serves linearizable reads from local state without ReadIndex.
	// It exists only to prove that a linearizability checker catches stale reads; it is
	// settable from this package's tests or by building with -tags berth_unsafe_local_reads.
	localLinearizableReads bool
	// watchResponseBytes overrides defaultWatchResponseBytes (tests).
	watchResponseBytes int
	// noHandover makes a stop skip the hand-over and the drain, as a crash would; tests use
	// it to kill a member in process.
	noHandover bool
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Name:                "default",
		DataDir:             "default.coord",
		ListenClient:        "127.0.0.1:7379",
		ListenPeer:          "127.0.0.1:7380",
		InitialClusterState: ClusterStateNew,
		HeartbeatInterval:   100 * time.Millisecond,
		ElectionTimeout:     time.Second,
		RequestTimeout:      5 * time.Second,
		HistoryWindow:       100000,
		WatcherBuffer:       4096,
		MaxClockSkew:        100 * time.Millisecond,
		SnapshotEntries:     100000,
	}
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	if c.InitialClusterState == "" {
		c.InitialClusterState = d.InitialClusterState
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = d.HeartbeatInterval
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = d.ElectionTimeout
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = d.RequestTimeout
	}
	if c.HistoryWindow == 0 {
		c.HistoryWindow = d.HistoryWindow
	}
	if c.WatcherBuffer == 0 {
		c.WatcherBuffer = d.WatcherBuffer
	}
	if c.MaxClockSkew == 0 {
		c.MaxClockSkew = d.MaxClockSkew
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = d.SnapshotEntries
	}
	if c.AdvertiseClient == "" {
		c.AdvertiseClient = c.ListenClient
		if c.ClientListener != nil {
			c.AdvertiseClient = c.ClientListener.Addr().String()
		}
	}
}

// Member is one entry of the initial cluster.
type Member struct {
	// Name is the member's name.
	Name string
	// PeerAddr is its peer host:port.
	PeerAddr string
}

// ParseInitialCluster parses "n1=host:port,n2=host:port"; names and addresses must be
// unique. A name is letters, digits, '.', '_' and '-'; a host is an IP address or a DNS
// name, and the port a number from 1 to 65535 (a member add with any other address would
// be accepted by Raft and cost the cluster its quorum).
func ParseInitialCluster(s string) ([]Member, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("initial cluster is empty")
	}
	var out []Member
	names, addrs := map[string]bool{}, map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		name, addr, ok := strings.Cut(part, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("initial cluster entry %q: want name=host:port", part)
		}
		if !validMemberName(name) {
			return nil, fmt.Errorf("initial cluster entry %q: name %q: want 1 to 63 letters, digits, '.', '_' and '-', starting with a letter or digit", part, name)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || port == "" {
			return nil, fmt.Errorf("initial cluster entry %q: address %q is not host:port", part, addr)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("initial cluster entry %q: port %q is not a number from 1 to 65535", part, port)
		}
		if net.ParseIP(host) == nil && !validHostName(host) {
			return nil, fmt.Errorf("initial cluster entry %q: host %q is neither an IP address nor a DNS name", part, host)
		}
		if names[name] {
			return nil, fmt.Errorf("initial cluster: name %q appears twice", name)
		}
		if addrs[addr] {
			return nil, fmt.Errorf("initial cluster: address %q appears twice", addr)
		}
		names[name], addrs[addr] = true, true
		out = append(out, Member{Name: name, PeerAddr: addr})
	}
	return out, nil
}

// validMemberName reports whether name is 1 to 63 letters, digits, '.', '_' and '-',
// starting with a letter or digit.
func validMemberName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for i, c := range []byte(name) {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// validHostName reports whether host is a DNS name: dot-separated labels of letters,
// digits, '-' and '_', each 1 to 63 bytes, at most 253 bytes in all.
func validHostName(host string) bool {
	if host == "" || len(host) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// MemberID derives a member id from a name: FNV-64a of the name (never 0).
func MemberID(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	if v := h.Sum64(); v != 0 {
		return v
	}
	return 1
}

// ClusterIDOf derives the cluster id from the initial members: FNV-64a of the sorted
// name=address entries (never 0).
func ClusterIDOf(members []Member) uint64 {
	entries := make([]string, 0, len(members))
	for _, m := range members {
		entries = append(entries, m.Name+"="+m.PeerAddr)
	}
	slices.Sort(entries)
	return MemberID("berth-coord:" + strings.Join(entries, ","))
}

// Validate checks the configuration after defaults; errors name the field.
func (c *Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("coord config: %s: %s", field, fmt.Sprintf(format, args...))
	}
	if c.Name == "" {
		return bad("name", "required")
	}
	if c.DataDir == "" {
		return bad("data-dir", "required")
	}
	if c.ClientListener == nil {
		if _, _, err := net.SplitHostPort(c.ListenClient); err != nil {
			return bad("listen-client", "%q is not host:port", c.ListenClient)
		}
	}
	if c.PeerListener == nil {
		if _, _, err := net.SplitHostPort(c.ListenPeer); err != nil {
			return bad("listen-peer", "%q is not host:port", c.ListenPeer)
		}
	}
	if c.ListenMetrics != "" && c.MetricsListener == nil {
		if _, _, err := net.SplitHostPort(c.ListenMetrics); err != nil {
			return bad("listen-metrics", "%q is not host:port", c.ListenMetrics)
		}
	}
	members, err := ParseInitialCluster(c.InitialCluster)
	if err != nil {
		return bad("initial-cluster", "%v", err)
	}
	if !slices.ContainsFunc(members, func(m Member) bool { return m.Name == c.Name }) {
		return bad("initial-cluster", "does not include this member %q", c.Name)
	}
	if c.InitialClusterState != ClusterStateNew && c.InitialClusterState != ClusterStateExisting {
		return bad("initial-cluster-state", "%q is neither %q nor %q", c.InitialClusterState, ClusterStateNew, ClusterStateExisting)
	}
	if c.HeartbeatInterval < time.Millisecond {
		return bad("heartbeat-interval", "%v is under 1ms", c.HeartbeatInterval)
	}
	if c.ElectionTimeout < 3*c.HeartbeatInterval {
		return bad("election-timeout", "%v must be at least 3 heartbeat intervals (%v)", c.ElectionTimeout, 3*c.HeartbeatInterval)
	}
	if c.RequestTimeout <= 0 {
		return bad("request-timeout", "%v is not positive", c.RequestTimeout)
	}
	if c.MaxClockSkew < 0 || c.MaxClockSkew > c.ElectionTimeout {
		return bad("max-clock-skew", "%v is outside 0 to the election timeout (%v)", c.MaxClockSkew, c.ElectionTimeout)
	}
	if c.HistoryWindow < 1 {
		return bad("history-window", "%d is under 1", c.HistoryWindow)
	}
	for name, t := range map[string]TLSFiles{"client": c.ClientTLS, "peer": c.PeerTLS, "http": c.HTTPTLS} {
		if t.enabled() && (t.Cert == "" || t.Key == "") {
			return bad(name+"-cert-file/"+name+"-key-file", "both are required when %s TLS is configured", name)
		}
	}
	if c.PeerTLS.enabled() && c.PeerTLS.TrustedCA == "" {
		return bad("peer-trusted-ca-file", "required with peer TLS (peers verify each other)")
	}
	return nil
}

// serverTLS loads a server-side TLS config; mutual TLS when TrustedCA is set.
func (t TLSFiles) serverTLS(side string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("load %s certificate %s: %w", side, t.Cert, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.TrustedCA != "" {
		pool, err := loadPool(t.TrustedCA)
		if err != nil {
			return nil, fmt.Errorf("load %s trusted CA: %w", side, err)
		}
		cfg.ClientCAs, cfg.RootCAs = pool, pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", file)
	}
	return pool, nil
}

// FormatID prints a member or cluster id as the API and logs do (hex).
func FormatID(id uint64) string { return strconv.FormatUint(id, 16) }
