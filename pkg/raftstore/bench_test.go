package raftstore

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkPropose3 measures proposals of 256-byte values through the leader of a
// 3-member cluster on loopback (real gRPC, real fsync), with 1 client and with 64 per
// GOMAXPROCS.
func BenchmarkPropose3(b *testing.B) {
	for _, par := range []int{0, 64} {
		name := "serial"
		if par > 0 {
			name = fmt.Sprintf("parallel-%dx", par)
		}
		b.Run(name, func(b *testing.B) {
			c := newTestCluster(b, 3, func(cfg *Config) {
				cfg.TickInterval = 100 * time.Millisecond
				cfg.SnapshotEntries = 100000
			})
			for id := uint64(1); id <= 3; id++ {
				c.start(id, false)
			}
			n := c.member(c.waitLeader()).node
			value := strings.Repeat("x", 256)
			var seq atomic.Uint64
			propose := func() error {
				_, err := n.Propose(b.Context(), fmt.Appendf(nil, "k%d=%s", seq.Add(1), value))
				return err
			}
			b.ResetTimer()
			if par == 0 {
				for b.Loop() {
					if err := propose(); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := propose(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
