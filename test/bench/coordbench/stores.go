package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// store is what the benchmarks need of a key-value store: connections spread over the
// members, puts, gets and watches.
type store interface {
	// Name names the store in the table.
	Name() string
	// Conns is the number of client connections.
	Conns() int
	// Put writes val at key over connection conn.
	Put(ctx context.Context, conn int, key string, val []byte) error
	// Get reads key over connection conn; serializable reads from the serving member's state.
	Get(ctx context.Context, conn int, key string, serializable bool) error
	// Watch watches key over connection conn. It returns once the watch is established and
	// then calls fn with the value of every put event, from a goroutine counted in wg, until
	// ctx ends.
	Watch(ctx context.Context, wg *sync.WaitGroup, conn int, key string, fn func(val []byte)) error
	// Close closes every connection.
	Close() error
}

// coordStore talks to berth-coord over its gRPC API: connection i goes to endpoint
// i mod len(endpoints).
type coordStore struct {
	conns      []*grpc.ClientConn
	apis       []coordv1.CoordServiceClient
	requestIDs bool
	seq        atomic.Int64
	prefix     string
}

func newCoordStore(endpoints []string, conns int, requestIDs bool) (*coordStore, error) {
	s := &coordStore{requestIDs: requestIDs, prefix: strconv.FormatInt(time.Now().UnixNano(), 36)}
	for i := range conns {
		c, err := grpc.NewClient(endpoints[i%len(endpoints)],
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("dial berth-coord %s: %w", endpoints[i%len(endpoints)], err)
		}
		s.conns = append(s.conns, c)
		s.apis = append(s.apis, coordv1.NewCoordServiceClient(c))
	}
	return s, nil
}

func (s *coordStore) Name() string { return "berth-coord" }
func (s *coordStore) Conns() int   { return len(s.conns) }

func (s *coordStore) Put(ctx context.Context, conn int, key string, val []byte) error {
	req := &coordv1.PutRequest{Path: key, Value: val}
	if s.requestIDs {
		// A real client (pkg/coordclient) sends a request id with every write so that it
		// can retry safely; the store pays for remembering it.
		req.RequestId = s.prefix + "-" + strconv.FormatInt(s.seq.Add(1), 36)
	}
	_, err := s.apis[conn].Put(ctx, req)
	return err
}

func (s *coordStore) Get(ctx context.Context, conn int, key string, serializable bool) error {
	_, err := s.apis[conn].Get(ctx, &coordv1.GetRequest{Path: key, Serializable: serializable})
	return err
}

func (s *coordStore) Watch(ctx context.Context, wg *sync.WaitGroup, conn int, key string, fn func([]byte)) error {
	ws, err := s.apis[conn].Watch(ctx, &coordv1.WatchRequest{Path: key})
	if err != nil {
		return fmt.Errorf("watch %s: %w", key, err)
	}
	r, err := ws.Recv()
	if err != nil {
		return fmt.Errorf("watch %s: %w", key, err)
	}
	if !r.Created {
		return fmt.Errorf("watch %s: first response is not created", key)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			r, err := ws.Recv()
			if err != nil {
				return
			}
			for _, e := range r.Events {
				if e.Type == coordv1.EventType_EVENT_TYPE_PUT {
					fn(e.Node.Value)
				}
			}
		}
	}()
	return nil
}

func (s *coordStore) Close() error {
	var errs []error
	for _, c := range s.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// etcdStore talks to etcd with clientv3: client i has endpoint i mod len(endpoints) only,
// so that connections spread over the members as coordStore's do.
type etcdStore struct {
	clients []*clientv3.Client
}

func newEtcdStore(endpoints []string, conns int) (*etcdStore, error) {
	s := &etcdStore{}
	for i := range conns {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:          []string{endpoints[i%len(endpoints)]},
			DialTimeout:        5 * time.Second,
			Logger:             zap.NewNop(),
			MaxCallRecvMsgSize: 64 << 20,
		})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("dial etcd %s: %w", endpoints[i%len(endpoints)], err)
		}
		s.clients = append(s.clients, c)
	}
	return s, nil
}

func (s *etcdStore) Name() string { return "etcd" }
func (s *etcdStore) Conns() int   { return len(s.clients) }

func (s *etcdStore) Put(ctx context.Context, conn int, key string, val []byte) error {
	_, err := s.clients[conn].Put(ctx, key, string(val))
	return err
}

func (s *etcdStore) Get(ctx context.Context, conn int, key string, serializable bool) error {
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	_, err := s.clients[conn].Get(ctx, key, opts...)
	return err
}

func (s *etcdStore) Watch(ctx context.Context, wg *sync.WaitGroup, conn int, key string, fn func([]byte)) error {
	wch := s.clients[conn].Watch(ctx, key, clientv3.WithCreatedNotify())
	r, ok := <-wch
	if !ok {
		return fmt.Errorf("watch %s: channel closed: %w", key, ctx.Err())
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("watch %s: %w", key, err)
	}
	if !r.Created {
		return fmt.Errorf("watch %s: first response is not created", key)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for r := range wch {
			for _, e := range r.Events {
				if e.Type == clientv3.EventTypePut {
					fn(e.Kv.Value)
				}
			}
		}
	}()
	return nil
}

func (s *etcdStore) Close() error {
	var errs []error
	for _, c := range s.clients {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
