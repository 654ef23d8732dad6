// Package names runs berth-name-service against a real single-member berth-coord and an
// embedded NATS server with JetStream, all in process on loopback ports chosen by the
// kernel: the views, KV, resolve and traffic tests of this package and the DNS benchmark's
// server (benchserver) use it.
package names

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthdev/berth/pkg/coordclient"
	"github.com/berthdev/berth/pkg/natsbus"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	coordsrv "github.com/berthdev/berth/services/coord"
	nameservice "github.com/berthdev/berth/services/name-service"
)

// Env is a running coord member, NATS server and name service. Close stops them.
type Env struct {
	Coord    *coordclient.Client
	Bus      *natsbus.Bus
	Names    *nameservice.Service
	Addrs    nameservice.Addrs
	NATSURL  string
	Registry *prometheus.Registry
	// CoordAddr is the coord member's client address.
	CoordAddr string

	ns        *server.Server
	stopCoord context.CancelFunc
	coordDone chan error
	stopNames context.CancelFunc
	namesDone chan error
}

// Start runs everything with its state under dir. tweak, when set, changes the name
// service's configuration (its listeners default to 127.0.0.1:0).
func Start(ctx context.Context, dir string, log *slog.Logger, tweak func(*nameservice.Config)) (*Env, error) {
	return StartWithDeps(ctx, dir, log, tweak, nil)
}

// StartWithDeps is Start, with deps, when set, changing the name service's Deps once
// coord and NATS run (the Env's Coord, Bus and CoordAddr are set by then).
func StartWithDeps(ctx context.Context, dir string, log *slog.Logger, tweak func(*nameservice.Config), deps func(*Env, *nameservice.Deps)) (_ *Env, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Env{}
	defer func() {
		if err != nil {
			_ = e.Close()
		}
	}()
	// NATS with JetStream.
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: filepath.Join(dir, "nats"),
	})
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	ns.Start()
	e.ns = ns
	if !ns.ReadyForConnections(10 * time.Second) {
		return nil, errors.New("nats server: not ready in 10s")
	}
	e.NATSURL = "nats://" + ns.Addr().String()

	// One coord member.
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cl.Close()
		return nil, err
	}
	ccfg := coordsrv.Config{
		Name: "n1", DataDir: filepath.Join(dir, "coord"),
		ListenClient: cl.Addr().String(), ListenPeer: pl.Addr().String(),
		ClientListener: cl, PeerListener: pl,
		InitialCluster:    "n1=" + pl.Addr().String(),
		HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
	}
	srv, err := coordsrv.New(ccfg, log)
	if err != nil {
		cl.Close()
		pl.Close()
		return nil, fmt.Errorf("coord: %w", err)
	}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.stopCoord, e.coordDone = cancel, make(chan error, 1)
	go func() { e.coordDone <- srv.Run(cctx) }()
	e.CoordAddr = cl.Addr().String()
	e.Coord, err = coordclient.New(ctx, coordclient.Config{Endpoints: []string{e.CoordAddr}, RequestTimeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	// Wait for the single member to lead.
	for {
		_, err := e.Coord.List(ctx, "/berth", coordclient.Limit(1))
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("coord not ready: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	e.Bus, err = natsbus.Connect(ctx, natsbus.Config{URLs: []string{e.NATSURL}, Name: "names-test"})
	if err != nil {
		return nil, err
	}
	if err := e.Bus.EnsureStreams(ctx, natsbus.StreamConfig{}); err != nil {
		return nil, err
	}
	cfg := nameservice.DefaultConfig()
	cfg.DNSAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	if tweak != nil {
		tweak(&cfg)
	}
	e.Registry = prometheus.NewRegistry()
	d := nameservice.Deps{Bus: e.Bus, Coord: e.Coord, Logger: log, Registerer: e.Registry}
	if deps != nil {
		deps(e, &d)
	}
	e.Names, err = nameservice.New(cfg, d)
	if err != nil {
		return nil, err
	}
	e.Addrs, err = e.Names.Listen()
	if err != nil {
		return nil, err
	}
	nctx, ncancel := context.WithCancel(context.WithoutCancel(ctx))
	e.stopNames, e.namesDone = ncancel, make(chan error, 1)
	go func() { e.namesDone <- e.Names.Run(nctx) }()
	for e.Names.Ready(ctx) != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return e, nil
}

// HTTPURL is the base URL of the name service's HTTP API.
func (e *Env) HTTPURL() string { return "http://" + e.Addrs.HTTP.String() }

// Close stops the name service, the clients, coord and NATS, in that order.
func (e *Env) Close() error {
	var errs []error
	if e.stopNames != nil {
		e.stopNames()
		if err := <-e.namesDone; err != nil {
			errs = append(errs, fmt.Errorf("name service: %w", err))
		}
	}
	if e.Bus != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = e.Bus.Close(ctx)
		cancel()
	}
	if e.Coord != nil {
		_ = e.Coord.Close()
	}
	if e.stopCoord != nil {
		e.stopCoord()
		if err := <-e.coordDone; err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("coord: %w", err))
		}
	}
	if e.ns != nil {
		e.ns.Shutdown()
		e.ns.WaitForShutdown()
	}
	return errors.Join(errs...)
}

// InstancePath is the coord path of an instance.
func InstancePath(service, id string) string { return "/berth/instances/" + service + "/" + id }

// Register writes an instance node (not ephemeral unless session ≠ 0) and returns the
// revision of the write.
func (e *Env) Register(ctx context.Context, service, id string, in *namesv1.Instance, session int64) (int64, error) {
	b, err := protojson.Marshal(in)
	if err != nil {
		return 0, err
	}
	var opts []coordclient.PutOption
	if session != 0 {
		opts = append(opts, coordclient.Ephemeral(session))
	}
	res, err := e.Coord.Put(ctx, InstancePath(service, id), b, opts...)
	if err != nil {
		return 0, err
	}
	return res.Revision, nil
}

// Itoa is strconv.Itoa, for building ids.
func Itoa(i int) string { return strconv.Itoa(i) }
