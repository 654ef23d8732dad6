package tree

import (
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/raftstore"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestApplyCPU(t *testing.T) {
	m := New(Options{})
	val := make([]byte, 256)
	const n = 400000
	entries := make([][]byte, n)
	for i := range entries {
		entries[i], _ = EncodePut(&coordv1.PutRequest{Path: fmt.Sprintf("/bench/kv/key-%d", i%10000), Value: val, RequestId: fmt.Sprintf("req-%d", i)})
	}
	for i := 0; i < 150000; i++ {
		m.Apply(raftstore.Entry{Index: uint64(i + 1), Term: 1, Data: entries[i]})
	}
	runtime.GC()
	var best time.Duration = 1 << 62
	for round := 0; round < 5; round++ {
		start := cpuNow()
		for i := 150000 + round*50000; i < 150000+(round+1)*50000; i++ {
			m.Apply(raftstore.Entry{Index: uint64(i + 1), Term: 1, Data: entries[i]})
		}
		best = min(best, (cpuNow()-start)/50000)
	}
	t.Logf("apply put: best %v CPU per op (incl. GC)", best)
}
