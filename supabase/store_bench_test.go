package supabase_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
)

// serverCPU returns the CPU time the PostgreSQL backends of role have used
// so far (from /proc; the test cluster runs on this host). Benchmarks
// report it next to wall time: on a busy machine wall time mostly
// measures the queue for a core.
func serverCPU(b *testing.B, db *pgtest.DB, role string) time.Duration {
	b.Helper()
	var pids []int
	rows := 0
	dbfix.QueryRow(b, db, `SELECT array_agg(pid), count(*) FROM pg_stat_activity WHERE usename = $1`, []any{role}, &pids, &rows)
	var total time.Duration
	for _, pid := range pids {
		raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			b.Fatalf("server cpu: %v", err)
		}
		// Fields after the parenthesised command: utime is the 12th, stime the 13th.
		f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * (time.Second / 100) // USER_HZ
	}
	return total
}

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
			cpu0 := serverCPU(b, f.db, f.role)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				_, peers, err := s.Snapshot(f.ctx, f.a)
				if err != nil || len(peers) != 10000 {
					b.Fatalf("%d peers, %v", len(peers), err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/snapshot")
			b.StopTimer()
			b.ReportMetric(float64((serverCPU(b, f.db, f.role)-cpu0).Milliseconds())/float64(b.N), "server-cpu-ms/snapshot")
		})
	}
}

// One usage flush of 10,000 peers: 10,000 usage rows appended and 10,000
// status rows updated in one transaction; then the same batch retried.
func BenchmarkWriteStatus10k(b *testing.B) {
	f := newStoreFixture(b)
	ids := dbfix.AddPeers(b, f.db, f.a, 10000)
	s := f.open(b, f.urlA)
	end := time.Now().UTC().Add(-time.Hour).Truncate(time.Second) // flushes never end in the future
	var write, retry, cpuWrite, cpuRetry time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		end = end.Add(time.Minute)
		usage, status := usageBatch(ids, end)
		for j := range status {
			status[j].UploadBytes += int64(i) // every status row changes
		}
		b.StopTimer()
		cpu0 := serverCPU(b, f.db, f.role)
		b.StartTimer()
		start := time.Now()
		if err := s.WriteStatus(f.ctx, f.a, usage, status); err != nil {
			b.Fatal(err)
		}
		write += time.Since(start)
		b.StopTimer()
		cpu1 := serverCPU(b, f.db, f.role)
		b.StartTimer()
		start = time.Now()
		if err := s.WriteStatus(f.ctx, f.a, usage, status); err != nil {
			b.Fatal(err)
		}
		retry += time.Since(start)
		b.StopTimer()
		cpu2 := serverCPU(b, f.db, f.role)
		b.StartTimer()
		cpuWrite += cpu1 - cpu0
		cpuRetry += cpu2 - cpu1
	}
	b.ReportMetric(float64(write.Microseconds())/1000/float64(b.N), "ms/flush")
	b.ReportMetric(float64(retry.Microseconds())/1000/float64(b.N), "ms/retry")
	b.ReportMetric(float64(cpuWrite.Milliseconds())/float64(b.N), "server-cpu-ms/flush")
	b.ReportMetric(float64(cpuRetry.Milliseconds())/float64(b.N), "server-cpu-ms/retry")
}
