package tree

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/berthdev/berth/pkg/raftstore"
	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

func fill(b testing.TB, n int) *Machine {
	m := New(Options{})
	val := make([]byte, 256)
	for i := range n {
		data, err := EncodePut(&coordv1.PutRequest{Path: fmt.Sprintf("/berth/instances/svc%d/i-%d", i%100, i), Value: val})
		if err != nil {
			b.Fatal(err)
		}
		m.Apply(raftstore.Entry{Index: uint64(i + 1), Term: 1, Data: data})
	}
	return m
}

// BenchmarkSnapshotTake measures the time Apply is held up by taking a snapshot.
func BenchmarkSnapshotTake(b *testing.B) {
	m := fill(b, 200000)
	data, _ := EncodePut(&coordv1.PutRequest{Path: "/berth/instances/svc1/i-1", Value: []byte("x")})
	idx := uint64(1 << 30)
	b.ResetTimer()
	for b.Loop() {
		src, _ := m.Snapshot()
		idx++
		m.Apply(raftstore.Entry{Index: idx, Term: 1, Data: data}) // the first write after a copy pays the copy-on-write
		src.Close()
	}
}

// BenchmarkSnapshotWrite measures serializing 200k nodes of 256 B while Apply continues.
func BenchmarkSnapshotWrite(b *testing.B) {
	m := fill(b, 200000)
	val := make([]byte, 256)
	b.ResetTimer()
	for b.Loop() {
		src, _ := m.Snapshot()
		done := make(chan time.Duration)
		go func() {
			var worst time.Duration
			for i := range 2000 {
				data, _ := EncodePut(&coordv1.PutRequest{Path: fmt.Sprintf("/w/%d", i), Value: val})
				t0 := time.Now()
				m.Apply(raftstore.Entry{Index: uint64(1<<30 + i), Term: 1, Data: data})
				worst = max(worst, time.Since(t0))
			}
			done <- worst
		}()
		n, err := src.WriteTo(io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		worst := <-done
		b.ReportMetric(float64(n)/1e6, "MB")
		b.ReportMetric(float64(worst.Microseconds()), "worst-apply-µs")
		src.Close()
	}
}

// BenchmarkApplyPut measures applying one 256-byte put with a request id, to one of 10,000
// keys, with the request-id table full (100,000 results), as every member does for every
// put. The ids are all distinct (a repeated id would be answered from the table).
func BenchmarkApplyPut(b *testing.B) {
	m := New(Options{})
	val := make([]byte, 256)
	const pool = 1 << 18
	entries := make([][]byte, pool)
	for i := range entries {
		entries[i], _ = EncodePut(&coordv1.PutRequest{Path: fmt.Sprintf("/bench/kv/key-%d", i%10000), Value: val, RequestId: fmt.Sprintf("req-%d", i)})
	}
	i := 0
	for ; i < 150000; i++ { // fill the tree and the request-id table
		m.Apply(raftstore.Entry{Index: uint64(i + 1), Term: 1, Data: entries[i]})
	}
	b.ReportAllocs()
	for b.Loop() {
		if i == pool {
			b.StopTimer()
			m = New(Options{}) // ids would repeat: start over (rarely)
			i = 0
			b.StartTimer()
		}
		m.Apply(raftstore.Entry{Index: uint64(i + 1), Term: 1, Data: entries[i]})
		i++
	}
}
