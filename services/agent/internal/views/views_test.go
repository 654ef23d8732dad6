package views

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/berthdev/berth/pkg/natsbus"
	"github.com/berthdev/berth/pkg/natstest"
	namesv1 "github.com/berthdev/berth/proto/names/v1"
	"github.com/berthdev/berth/proto/subjects"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func connect(t *testing.T, url string) *natsbus.Bus {
	t.Helper()
	b, err := natsbus.Connect(t.Context(), natsbus.Config{URLs: []string{url}, Name: "views-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

func view(rev int64, ips ...string) *namesv1.ServiceView {
	v := &namesv1.ServiceView{Service: "hotel/search", Revision: rev}
	for _, ip := range ips {
		v.Instances = append(v.Instances, &namesv1.Instance{Id: "i-" + ip, Ip: ip, Port: 80})
	}
	return v
}

func publish(t *testing.T, b *natsbus.Bus, v *namesv1.ServiceView) {
	t.Helper()
	data, _ := proto.Marshal(v)
	subject, _ := subjects.NamesView(v.GetService())
	if err := b.Conn().Publish(subject, data); err != nil {
		t.Fatal(err)
	}
	_ = b.Conn().Flush()
}

func run(t *testing.T, f *Follower) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitRev(t *testing.T, f *Follower, svc string, rev int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := f.Get(svc)
		if s.Revision() == rev {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: revision %d never came (have %d)", svc, rev, s.Revision())
		}
		select {
		case <-s.Changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestFollow(t *testing.T) {
	ns := natstest.RunServer(t)
	pub := connect(t, ns.URL())
	// The bucket holds revision 5 before anyone follows the service.
	kv, err := pub.JetStream().CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: subjects.NamesBucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := proto.Marshal(view(5, "10.0.0.1"))
	if _, err := kv.Put(t.Context(), "hotel.search", data); err != nil {
		t.Fatal(err)
	}

	agent := connect(t, ns.URL())
	f, err := New(FromBus(agent), Config{Idle: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, f)
	release, err := f.Hold("hotel/search")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if s := f.Wait(ctx, "hotel/search"); s.Revision() != 5 || s.Table == nil {
		t.Fatalf("first view: got revision %d, want 5 from the bucket", s.Revision())
	}
	// A newer view on the subject is applied; an older one (another replica) is not.
	publish(t, pub, view(7, "10.0.0.1", "10.0.0.2"))
	waitRev(t, f, "hotel/search", 7)
	publish(t, pub, view(8, "10.0.0.3"))
	waitRev(t, f, "hotel/search", 8)
	publish(t, pub, view(6, "10.0.0.9"))
	time.Sleep(200 * time.Millisecond)
	if got := f.Get("hotel/search").View; got.GetRevision() != 8 || got.GetInstances()[0].GetIp() != "10.0.0.3" {
		t.Errorf("view after an older publish: got revision %d, want the revision 8 view", got.GetRevision())
	}

	// NATS goes away: the last view stays.
	ns.Shutdown()
	time.Sleep(200 * time.Millisecond)
	if s := f.Get("hotel/search"); s.Revision() != 8 {
		t.Errorf("view with NATS down: got revision %d, want the last one, 8", s.Revision())
	}
}

func TestUnknownAndIdle(t *testing.T) {
	ns := natstest.RunServer(t)
	agent := connect(t, ns.URL())
	f, err := New(FromBus(agent), Config{Idle: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, f)
	if err := f.Touch("nope/none"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if s := f.Wait(ctx, "nope/none"); !s.Loaded || s.View != nil {
		t.Errorf("service without a view: got loaded %v view %v, want loaded with no view", s.Loaded, s.View)
	}
	// Not held, not touched again: dropped after the idle time.
	deadline := time.Now().Add(5 * time.Second)
	for len(f.Followed()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := f.Followed(); len(got) != 0 {
		t.Errorf("followed after idle: got %v, want none", got)
	}
	if err := f.Touch("Bad Service"); err == nil {
		t.Errorf("Touch of a bad path: got nil error")
	}
}
