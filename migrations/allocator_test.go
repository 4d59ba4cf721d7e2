package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/waylume/waylume-node/internal/dbfix"
)

const keySQL = dbfix.RandomKeySQL

func insertPeer(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, nodeID string) (netip.Addr, error) {
	var a netip.Prefix
	err := q.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, `+keySQL+`) RETURNING address`, nodeID).Scan(&a)
	return a.Addr(), err
}

func TestAllocatorLowestFreeAndReuse(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	conn := connect(t, db.URL)
	node := dbfix.CreateNode(t, db, "alloc", "10.8.0.1/24")

	// The node holds .1: peers start at .2.
	for i, want := range []string{"10.8.0.2", "10.8.0.3", "10.8.0.4", "10.8.0.5"} {
		got, err := insertPeer(ctx, conn, node)
		if err != nil {
			t.Fatal(err)
		}
		if got.String() != want {
			t.Fatalf("peer %d got %s, want %s", i, got, want)
		}
	}
	// Explicit addresses are honoured and skipped by the allocator.
	if _, err := conn.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key, address) VALUES ($1, `+keySQL+`, '10.8.0.6')`, node); err != nil {
		t.Fatal(err)
	}
	if got, _ := insertPeer(ctx, conn, node); got.String() != "10.8.0.7" {
		t.Fatalf("after explicit .6 got %s, want 10.8.0.7", got)
	}
	// Freed addresses come back lowest first.
	if _, err := conn.Exec(ctx, `DELETE FROM waylume.peers WHERE node_id = $1 AND address IN ('10.8.0.4', '10.8.0.3')`, node); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.8.0.3", "10.8.0.4", "10.8.0.8"} {
		if got, err := insertPeer(ctx, conn, node); err != nil || got.String() != want {
			t.Fatalf("got %s (%v), want %s", got, err, want)
		}
	}
	// A freed address taken explicitly is not handed out again.
	if _, err := conn.Exec(ctx, `DELETE FROM waylume.peers WHERE node_id = $1 AND address = '10.8.0.2'`, node); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key, address) VALUES ($1, `+keySQL+`, '10.8.0.2/24')`, node); err != nil {
		t.Fatal(err)
	}
	if got, _ := insertPeer(ctx, conn, node); got.String() != "10.8.0.9" {
		t.Fatalf("got %s, want 10.8.0.9", got)
	}
	// Changing an address frees the old one.
	if _, err := conn.Exec(ctx, `UPDATE waylume.peers SET address = '10.8.0.100' WHERE node_id = $1 AND address = '10.8.0.5'`, node); err != nil {
		t.Fatal(err)
	}
	if got, _ := insertPeer(ctx, conn, node); got.String() != "10.8.0.5" {
		t.Fatalf("got %s, want the freed 10.8.0.5", got)
	}
}

func TestAllocatorExhaustion(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	conn := connect(t, db.URL)
	// /29: .0 network, .7 broadcast, .1 the node: .2-.6 for peers.
	node := dbfix.CreateNode(t, db, "small", "10.9.0.1/29")
	for range 5 {
		if _, err := insertPeer(ctx, conn, node); err != nil {
			t.Fatal(err)
		}
	}
	_, err := insertPeer(ctx, conn, node)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53400" {
		t.Fatalf("insert into full pool: %v, want SQLSTATE 53400", err)
	}
	t.Logf("full pool error: %s", pgErr.Message)
	if _, err := conn.Exec(ctx, `DELETE FROM waylume.peers WHERE node_id = $1 AND address = '10.9.0.4'`, node); err != nil {
		t.Fatal(err)
	}
	if got, err := insertPeer(ctx, conn, node); err != nil || got.String() != "10.9.0.4" {
		t.Fatalf("after freeing .4 got %s (%v)", got, err)
	}
}

func TestAllocatorConcurrent(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	node := dbfix.CreateNode(t, db, "busy", "10.10.0.1/16")
	other := dbfix.CreateNode(t, db, "other", "10.10.0.1/16")
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 50
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range 2 * n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			target := node
			if i%2 == 1 {
				target = other
			}
			if _, err := insertPeer(ctx, pool, target); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent insert: %v", err)
	}
	for _, id := range []string{node, other} {
		var count, distinct int
		var max netip.Prefix
		if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT address), max(address) FROM waylume.peers WHERE node_id = $1`, id).Scan(&count, &distinct, &max); err != nil {
			t.Fatal(err)
		}
		// Dense: exactly .2 .. .201 (the node is .1).
		if count != n || distinct != n || max.Addr().String() != "10.10.0.201" {
			t.Fatalf("node %s: %d peers, %d distinct, max %s; want %d dense up to 10.10.0.201", id, count, distinct, max, n)
		}
	}
}

func TestAllocatorIPv6(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	conn := connect(t, db.URL)
	node := dbfix.CreateNode6(t, db, "dual", "10.11.0.1/24", "fd00:11::1/64")
	var a, a6 netip.Prefix
	if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, `+keySQL+`) RETURNING address, address6`, node).Scan(&a, &a6); err != nil {
		t.Fatal(err)
	}
	if a.String() != "10.11.0.2/32" || a6.String() != "fd00:11::2/128" {
		t.Fatalf("got %s %s, want 10.11.0.2/32 fd00:11::2/128", a, a6)
	}
	if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key, address6) VALUES ($1, `+keySQL+`, 'fd00:11::3') RETURNING address, address6`, node).Scan(&a, &a6); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, `+keySQL+`) RETURNING address, address6`, node).Scan(&a, &a6); err != nil {
		t.Fatal(err)
	}
	if a.String() != "10.11.0.4/32" || a6.String() != "fd00:11::4/128" {
		t.Fatalf("got %s %s, want 10.11.0.4/32 fd00:11::4/128", a, a6)
	}
	if _, err := conn.Exec(ctx, `DELETE FROM waylume.peers WHERE address6 = 'fd00:11::2'`); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, `+keySQL+`) RETURNING address, address6`, node).Scan(&a, &a6); err != nil {
		t.Fatal(err)
	}
	if a.String() != "10.11.0.2/32" || a6.String() != "fd00:11::2/128" {
		t.Fatalf("reuse got %s %s, want 10.11.0.2/32 fd00:11::2/128", a, a6)
	}
}

// A moved peer gets an address of its new node's pool; its old address
// goes back to the old node.
func TestAllocatorMove(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	conn := connect(t, db.URL)
	a := dbfix.CreateNode(t, db, "a", "10.12.0.1/24")
	b := dbfix.CreateNode(t, db, "b", "10.13.0.1/24")
	ids := dbfix.AddPeers(t, db, a, 3)
	dbfix.AddPeers(t, db, b, 1)
	var got netip.Prefix
	if err := conn.QueryRow(ctx, `UPDATE waylume.peers SET node_id = $1 WHERE id = $2 RETURNING address`, b, ids[0]).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got.Addr().String() != "10.13.0.3" {
		t.Fatalf("moved peer got %s, want 10.13.0.3", got)
	}
	if addr, err := insertPeer(ctx, conn, a); err != nil || addr.String() != "10.12.0.2" {
		t.Fatalf("old node reuse: %s (%v), want 10.12.0.2", addr, err)
	}
}

// A /8 holding 100,000 peers still allocates fast: the allocator never
// scans the pool or the peers. Timing is a benchmark's job; the test
// checks the result, BenchmarkAllocateBigPool measures.
func TestAllocatorBigPool(t *testing.T) {
	if testing.Short() {
		t.Skip("inserts 100,000 peers; skipped in -short")
	}
	ctx := context.Background()
	db := dbfix.Migrated(t)
	conn := connect(t, db.URL)
	node := dbfix.CreateNode(t, db, "big", "10.0.0.1/8")
	start := time.Now()
	fillBigPool(t, db.URL, node)
	t.Logf("100,000 peers inserted in %v", time.Since(start))
	// Free one in the middle: the next insert takes it.
	if _, err := conn.Exec(ctx, `DELETE FROM waylume.peers WHERE node_id = $1 AND address = '10.0.195.80'`, node); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.0.195.80", "10.1.134.162"} {
		got, err := insertPeer(ctx, conn, node)
		if err != nil || got.String() != want {
			t.Fatalf("got %s (%v), want %s", got, err, want)
		}
	}
}

func fillBigPool(t testing.TB, url, node string) { fillPool(t, url, node, 100000) }

func fillPool(t testing.TB, url, node string, n int) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// In batches so no transaction grows huge.
	for left := n; left > 0; left -= 10000 {
		if _, err := conn.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key) SELECT $1, `+keySQL+` FROM generate_series(1, $2::int)`, node, min(left, 10000)); err != nil {
			t.Fatal(err)
		}
	}
}

// Allocation cost against the number of peers the node already holds:
// flat, because nothing scans the pool or the peers.
func BenchmarkAllocate(b *testing.B) {
	for _, held := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			ctx := context.Background()
			db := dbfix.Migrated(b)
			node := dbfix.CreateNode(b, db, "big", "10.0.0.1/8")
			fillPool(b, db.URL, node, held)
			conn, err := pgx.Connect(ctx, db.URL)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close(ctx)
			// Free a few addresses so both paths (free list, high-water
			// mark) run.
			if _, err := conn.Exec(ctx, `DELETE FROM waylume.peers WHERE node_id = $1 AND address IN ('10.0.0.10', '10.0.1.0', '10.0.2.7')`, node); err != nil {
				b.Fatal(err)
			}
			var pid int
			if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
				b.Fatal(err)
			}
			cpu0 := backendCPU(b, pid)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := insertPeer(ctx, conn, node); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/insert")
			b.ReportMetric(float64((backendCPU(b, pid)-cpu0).Microseconds())/1000/float64(b.N), "server-cpu-ms/insert")
		})
	}
}

// INSERT ... ON CONFLICT DO NOTHING runs the allocator for rows it then
// skips; those addresses come back before the pool is called full.
func TestAllocatorReclaimsSkippedRows(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	conn := connect(t, db.URL)
	node := dbfix.CreateNode(t, db, "small", "10.14.0.1/29") // .2-.6 for peers
	if _, err := conn.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, $2)`, node, goodKey); err != nil {
		t.Fatal(err)
	}
	// Idempotent retries of the same peer: each allocates, none inserts.
	for range 4 {
		tag, err := conn.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, $2) ON CONFLICT (node_id, public_key) DO NOTHING`, node, goodKey)
		if err != nil || tag.RowsAffected() != 0 {
			t.Fatalf("retry: %v, %d rows", err, tag.RowsAffected())
		}
	}
	var got []string
	for range 4 {
		a, err := insertPeer(ctx, conn, node)
		if err != nil {
			t.Fatalf("after skipped rows the pool must still hold 4 addresses: %v (got %v)", err, got)
		}
		got = append(got, a.String())
	}
	if diff := cmp.Diff([]string{"10.14.0.3", "10.14.0.4", "10.14.0.5", "10.14.0.6"}, slices.Sorted(slices.Values(got))); diff != "" {
		t.Fatalf("addresses (-want +got):\n%s", diff)
	}
	if _, err := insertPeer(ctx, conn, node); err == nil {
		t.Fatal("sixth peer in a /29 accepted")
	}
}

// backendCPU is the CPU time PostgreSQL backend pid has used (the test
// cluster runs on this host): on a busy machine wall time mostly measures
// the queue for a core.
func backendCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ
}
