package supabase_test

import (
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/dbfix"
)

// Snapshot of a node with 10,000 peers, as the node's login role (row
// level security on), pool default settings.
func BenchmarkSnapshot10k(b *testing.B) {
	f := newStoreFixture(b)
	dbfix.AddPeers(b, f.db, f.a, 10000)
	dbfix.AddPeers(b, f.db, f.b, 1000)
	s := f.open(b, f.urlA)
	for _, mode := range []string{"", "simple_protocol"} {
		name := "mode=default"
		if mode != "" {
			name = "mode=" + mode
		}
		b.Run(name, func(b *testing.B) {
			s := s
			if mode != "" {
				s = f.open(b, withMode(f.urlA, mode))
			}
			if _, _, err := s.Snapshot(f.ctx, f.a); err != nil { // warm the pool
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				_, peers, err := s.Snapshot(f.ctx, f.a)
				if err != nil || len(peers) != 10000 {
					b.Fatalf("%d peers, %v", len(peers), err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/snapshot")
		})
	}
}

// One usage flush of 10,000 peers: 10,000 usage rows appended and 10,000
// status rows updated in one transaction; then the same batch retried.
func BenchmarkWriteStatus10k(b *testing.B) {
	f := newStoreFixture(b)
	ids := dbfix.AddPeers(b, f.db, f.a, 10000)
	s := f.open(b, f.urlA)
	end := time.Now().UTC().Truncate(time.Second)
	var write, retry time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		end = end.Add(time.Minute)
		usage, status := usageBatch(ids, end)
		for j := range status {
			status[j].UploadBytes += int64(i) // every status row changes
		}
		start := time.Now()
		if err := s.WriteStatus(f.ctx, f.a, usage, status); err != nil {
			b.Fatal(err)
		}
		write += time.Since(start)
		start = time.Now()
		if err := s.WriteStatus(f.ctx, f.a, usage, status); err != nil {
			b.Fatal(err)
		}
		retry += time.Since(start)
	}
	b.ReportMetric(float64(write.Microseconds())/1000/float64(b.N), "ms/flush")
	b.ReportMetric(float64(retry.Microseconds())/1000/float64(b.N), "ms/retry")
}
