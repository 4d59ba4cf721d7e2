package e2e

// BenchmarkFleet: many nodes on one database. Every node is the real
// reconciler with the real store (its own login role and pool) and its own
// LISTEN source; only the data plane is faked, with counters that move at
// every read, so the two cores of a test machine can hold a hundred nodes.
//
// Time is compressed by fleetScale: every interval of the node (usage
// flush 60 s, resync 60 s, heartbeat 30 s, idle cadence 5 min) and the
// database's checkpoint_timeout (5 min) runs fleetScale times faster, so
// a real second stands for fleetScale seconds of a production fleet. Work
// per flush, per resync and per checkpoint is the same as in production;
// figures are reported per simulated node-hour and peer-hour.
//
// WAYLUME_FLEET_SCALE (10), WAYLUME_FLEET_NODES (default "10,50,100"), WAYLUME_FLEET_PEERS (1000),
// WAYLUME_FLEET_MINUTES (simulated minutes per run, 10) and
// WAYLUME_FLEET_PROFILE ("active": every peer moves 100 KiB per flush;
// "idle": keepalives only) choose the runs. WAYLUME_FLEET_STATEMENTS=N
// logs the N statements that took the most time (pg_stat_statements,
// nested ones included; the server is restarted to load it, and the
// extension's own cost is then in the CPU figure).

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/reconcile"
	"github.com/waylume/waylume-node/supabase"
)

// fleetScale compresses time (WAYLUME_FLEET_SCALE, default 10): the
// machine must keep up with fleetScale times the production rate, which
// the flushes/node-h figure shows (60 when it does).
var fleetScale = func() time.Duration {
	n, err := strconv.Atoi(os.Getenv("WAYLUME_FLEET_SCALE"))
	if err != nil || n < 1 {
		return 10
	}
	return time.Duration(n)
}()

func fleetEnv(name string, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func BenchmarkFleet(b *testing.B) {
	peers, _ := strconv.Atoi(fleetEnv("WAYLUME_FLEET_PEERS", "1000"))
	minutes, _ := strconv.Atoi(fleetEnv("WAYLUME_FLEET_MINUTES", "10"))
	profile := fleetEnv("WAYLUME_FLEET_PROFILE", "active")
	for _, s := range strings.Split(fleetEnv("WAYLUME_FLEET_NODES", "10,50,100"), ",") {
		nodes, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || nodes < 1 {
			b.Fatalf("WAYLUME_FLEET_NODES: %q", s)
		}
		b.Run(fmt.Sprintf("nodes=%d/peers=%d/%s", nodes, peers, profile), func(b *testing.B) {
			runFleet(b, nodes, peers, time.Duration(minutes)*time.Minute, profile == "idle")
		})
	}
}

// fleet is one run: the database, its nodes and what they measured.
type fleet struct {
	db      *pgtest.DB
	admin   *pgxpool.Pool
	nodes   []*fleetNode
	applied sync.Map // reconcile.Key -> chan time.Time, for the event-to-apply probe
	snapMu  sync.Mutex
	snaps   []time.Duration
	flushes atomic.Int64 // store writes carrying usage
}

type fleetNode struct {
	id    string
	plane *fleetPlane
	rec   *reconcile.Reconciler
	store *supabase.Store
}

func runFleet(b *testing.B, nodes, peers int, sim time.Duration, idle bool) {
	f := &fleet{db: dbfix.Migrated(b)}
	f.tune(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin, err := pgxpool.New(ctx, f.db.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	f.admin = admin
	setup := time.Now()
	for i := range nodes {
		f.addNode(b, ctx, i, peers, idle)
	}
	b.Logf("setup of %d nodes x %d peers: %s", nodes, peers, time.Since(setup).Round(time.Second))

	var wg sync.WaitGroup
	runCtx, stop := context.WithCancel(ctx)
	for _, n := range f.nodes {
		wg.Go(func() { n.rec.Run(runCtx) })
		wg.Go(func() {
			supabase.Listen(runCtx, supabase.ListenConfig{URL: f.db.URLAs(nodeRole(n.id)), NodeID: n.id, Log: discard}, n.rec.Sink())
		})
	}
	// Warm up: every node applied its snapshot and flushed once.
	warm := time.Now()
	for _, n := range f.nodes {
		for n.rec.Ready(time.Hour) != nil || n.plane.reads.Load() < 2 {
			if time.Since(warm) > 10*time.Minute {
				b.Fatal("fleet not up within 10 minutes")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	f.snapMu.Lock()
	f.snaps = nil
	f.snapMu.Unlock()
	f.flushes.Store(0)

	f.resetStatements(b)
	before := f.sample(b)
	b.ResetTimer()
	real := sim / fleetScale
	lat, conns := f.probe(b, runCtx, real)
	after := f.sample(b)
	b.StopTimer()
	stop()
	wg.Wait()
	f.report(b, before, after, lat, conns, nodes*peers, nodes, sim)
	f.logStatements(b)
}

// tune makes the test cluster behave like a production server for the
// figures that depend on it: full page writes on (WAL after every
// checkpoint) and checkpoints fleetScale times as often as the default
// 5 minutes, as the rest of the clock.
func (f *fleet) tune(b *testing.B) {
	dbfix.Exec(b, f.db, `ALTER SYSTEM SET full_page_writes = on`)
	dbfix.Exec(b, f.db, fmt.Sprintf(`ALTER SYSTEM SET checkpoint_timeout = '%ds'`, max(30, 300/int(fleetScale))))
	dbfix.Exec(b, f.db, `SELECT pg_reload_conf()`)
	b.Cleanup(func() {
		dbfix.Exec(b, f.db, `ALTER SYSTEM RESET full_page_writes`)
		dbfix.Exec(b, f.db, `ALTER SYSTEM RESET checkpoint_timeout`)
		dbfix.Exec(b, f.db, `SELECT pg_reload_conf()`)
	})
	if fleetStatements() == 0 {
		return
	}
	dbfix.Exec(b, f.db, `ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'`)
	f.restart(b)
	dbfix.Exec(b, f.db, `ALTER SYSTEM SET pg_stat_statements.track = 'all'`)
	dbfix.Exec(b, f.db, `SELECT pg_reload_conf()`)
	dbfix.Exec(b, f.db, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`)
	b.Cleanup(func() {
		dbfix.Exec(b, f.db, `ALTER SYSTEM RESET pg_stat_statements.track`)
		dbfix.Exec(b, f.db, `ALTER SYSTEM RESET shared_preload_libraries`)
		f.restart(b)
	})
}

func (f *fleet) restart(b *testing.B) {
	if err := f.db.Cluster.StopServer(); err != nil {
		b.Fatal(err)
	}
	if err := f.db.Cluster.StartServer(); err != nil {
		b.Fatal(err)
	}
}

func fleetStatements() int {
	n, _ := strconv.Atoi(os.Getenv("WAYLUME_FLEET_STATEMENTS"))
	return n
}

func (f *fleet) resetStatements(b *testing.B) {
	if fleetStatements() > 0 {
		dbfix.Exec(b, f.db, `SELECT pg_stat_statements_reset()`)
	}
}

// logStatements logs the statements that took the most time in the
// measured interval, nested ones (inside record_usage) included.
func (f *fleet) logStatements(b *testing.B) {
	n := fleetStatements()
	if n == 0 {
		return
	}
	rows, err := f.admin.Query(context.Background(), `SELECT sum(total_exec_time), sum(calls), sum(rows),
			sum(shared_blks_hit + shared_blks_read), sum(wal_bytes), toplevel, left(regexp_replace(query, '\s+', ' ', 'g'), 140)
		FROM pg_stat_statements GROUP BY query, toplevel ORDER BY 1 DESC LIMIT $1`, n)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	var out strings.Builder
	for rows.Next() {
		var ms, wal float64
		var calls, nrows, blks int64
		var top bool
		var q string
		if err := rows.Scan(&ms, &calls, &nrows, &blks, &wal, &top, &q); err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(&out, "\n%8.0f ms %7d calls %8d rows %9d blks %7.1f MB wal top=%-5t %s", ms, calls, nrows, blks, wal/1e6, top, q)
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	b.Logf("statements by time:%s", out.String())
}

var discard = slog.New(slog.DiscardHandler)

func nodeRole(id string) string { return "waylume_node_" + strings.ReplaceAll(id, "-", "") }

func (f *fleet) addNode(b *testing.B, ctx context.Context, i, peers int, idle bool) {
	id := dbfix.CreateNode(b, f.db, fmt.Sprintf("fleet-%03d", i), "10.64.0.1/16")
	dbfix.AddPeers(b, f.db, id, peers)
	store, err := supabase.OpenStore(ctx, dbfix.NodeLogin(b, f.db, id), supabase.StoreOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(store.Close)
	plane := &fleetPlane{peers: map[reconcile.Key]*fleetCounters{}, idle: idle, fleet: f}
	rec, err := reconcile.New(reconcile.Config{
		NodeID: id, Store: &timedStore{Store: store, f: f}, DataPlane: plane, Log: discard,
		UsageInterval:     time.Minute / fleetScale,
		ResyncInterval:    time.Minute / fleetScale,
		HeartbeatInterval: 30 * time.Second / fleetScale,
		IdleInterval:      5 * time.Minute / fleetScale,
		Version:           "fleet",
	})
	if err != nil {
		b.Fatal(err)
	}
	f.nodes = append(f.nodes, &fleetNode{id: id, plane: plane, rec: rec, store: store})
}

// probe inserts peers on random nodes, 2 a second (one every 5
// simulated seconds across the fleet), while the fleet runs, timing each from its commit to the node's data plane, and samples
// the connections the nodes hold.
func (f *fleet) probe(b *testing.B, ctx context.Context, d time.Duration) (lat []time.Duration, conns int) {
	end := time.Now().Add(d)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var pending []chan time.Time
	var starts []time.Time
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		n := f.nodes[rand.IntN(len(f.nodes))]
		k := newKey(b).PublicKey()
		c := make(chan time.Time, 1)
		f.applied.Store(reconcile.Key(k), c)
		if _, err := f.admin.Exec(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, $2)`, n.id, k.String()); err != nil {
			b.Fatal(err)
		}
		pending, starts = append(pending, c), append(starts, time.Now())
		if i%20 == 0 {
			var c int
			if err := f.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'waylume_node_%'`).Scan(&c); err != nil {
				b.Fatal(err)
			}
			conns = max(conns, c)
		}
	}
	for i, c := range pending {
		select {
		case at := <-c:
			lat = append(lat, at.Sub(starts[i]))
		case <-time.After(30 * time.Second):
			b.Fatalf("probe row %d not applied within 30 s", i)
		}
	}
	return lat, conns
}

// fleetSample is what the database has done and holds at one moment.
type fleetSample struct {
	cpu        time.Duration
	wal        int64
	usageRows  int64
	usageBytes int64
	statusSize int64
	at         time.Time
}

func (f *fleet) sample(b *testing.B) fleetSample {
	s := fleetSample{cpu: clusterCPU(b, pgtest.Current(b)), at: time.Now()}
	dbfix.QueryRow(b, f.db, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
		(SELECT count(*) FROM waylume.peer_usage), pg_total_relation_size('waylume.peer_usage'),
		pg_total_relation_size('waylume.peer_status')`, nil, &s.wal, &s.usageRows, &s.usageBytes, &s.statusSize)
	return s
}

func (f *fleet) report(b *testing.B, before, after fleetSample, lat []time.Duration, conns, peers, nodes int, sim time.Duration) {
	hours := after.at.Sub(before.at).Hours() * float64(fleetScale) // simulated
	cpu := (after.cpu - before.cpu).Seconds()
	wal := float64(after.wal - before.wal)
	// Rows a peer owns per day: with buckets, one per bucket width (a day
	// has 24 hourly ones whatever the flush rate); append-only deltas grow
	// with the flushes, as measured.
	var width float64
	dbfix.QueryRow(b, f.db, `SELECT coalesce((SELECT extract(epoch FROM bucket_width)::float8 FROM waylume.usage_settings), 0)`, nil, &width)
	perRow := float64(after.usageBytes) / float64(max(after.usageRows, 1))
	rowsPerPeerDay := 86400 / width
	if width == 0 {
		rowsPerPeerDay = float64(after.usageRows-before.usageRows) / float64(peers) / hours * 24
	}
	f.snapMu.Lock()
	snaps := f.snaps
	f.snapMu.Unlock()
	b.ReportMetric(cpu/float64(nodes)/hours, "db-cpu-s/node-h")
	b.ReportMetric(100*cpu/(hours*3600), "db-cpu-%core")
	b.ReportMetric(wal/float64(nodes)/hours/1e6, "wal-MB/node-h")
	b.ReportMetric(wal/float64(peers)/hours, "wal-B/peer-h")
	b.ReportMetric(rowsPerPeerDay, "usage-rows/peer-day")
	b.ReportMetric(perRow*rowsPerPeerDay*100/1e6, "usage-MB/100peers-day")
	b.ReportMetric(float64(after.statusSize)/float64(peers), "status-B/peer")
	b.ReportMetric(float64(conns)/float64(nodes), "conns/node")
	b.ReportMetric(float64(f.flushes.Load())/float64(nodes)/hours, "flushes/node-h")
	if len(snaps) > 0 {
		b.ReportMetric(float64(percentile(snaps, 0.5).Microseconds())/1000, "snapshot-p50-ms")
		b.ReportMetric(float64(percentile(snaps, 0.99).Microseconds())/1000, "snapshot-p99-ms")
	}
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "event-p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "event-p99-ms")
	b.Logf("%d nodes x %d peers for %s simulated (%s real): db cpu %.1fs, wal %.1f MB, usage %d rows %.1f MB (%.0f B/row), peer_status %.1f MB, max %d node connections, %d probe rows",
		nodes, peers/nodes, sim, after.at.Sub(before.at).Round(time.Second), cpu, wal/1e6, after.usageRows, float64(after.usageBytes)/1e6, perRow,
		float64(after.statusSize)/1e6, conns, len(lat))
}

// clusterCPU is the CPU time the whole server has used: the postmaster,
// its live children (backends, checkpointer, WAL writer, autovacuum), and
// the children it already reaped (cutime, cstime), so exited backends and
// autovacuum workers count too.
func clusterCPU(b *testing.B, c *pgtest.Cluster) time.Duration {
	raw, err := os.ReadFile(filepath.Join(c.Dir, "data", "postmaster.pid"))
	if err != nil {
		b.Fatalf("cluster cpu: %v", err)
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(raw), "\n", 2)[0]))
	if err != nil {
		b.Fatalf("cluster cpu: postmaster pid: %v", err)
	}
	total := procCPU(pm, true)
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == pm {
			continue
		}
		if ppid, ok := procParent(pid); ok && ppid == pm {
			total += procCPU(pid, false)
		}
	}
	return total
}

// procStat returns the fields of /proc/pid/stat after the command name.
func procStat(pid int) []string {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(raw)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
}

func procParent(pid int) (int, bool) {
	f := procStat(pid)
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, err == nil
}

func procCPU(pid int, reaped bool) time.Duration {
	f := procStat(pid)
	if len(f) < 15 {
		return 0
	}
	var ticks int64
	fields := []int{11, 12} // utime, stime
	if reaped {
		fields = append(fields, 13, 14) // cutime, cstime
	}
	for _, i := range fields {
		n, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ
}

// timedStore records how long snapshots take.
type timedStore struct {
	*supabase.Store
	f *fleet
}

func (s *timedStore) Snapshot(ctx context.Context, nodeID string) (events.Node, []events.Peer, error) {
	start := time.Now()
	n, p, err := s.Store.Snapshot(ctx, nodeID)
	d := time.Since(start)
	s.f.snapMu.Lock()
	s.f.snaps = append(s.f.snaps, d)
	s.f.snapMu.Unlock()
	return n, p, err
}

func (s *timedStore) WriteStatus(ctx context.Context, nodeID string, usage []events.Usage, status []events.PeerStatus) error {
	if len(usage) > 0 {
		s.f.flushes.Add(1)
	}
	return s.Store.WriteStatus(ctx, nodeID, usage, status)
}

// fleetPlane is a data plane whose peers' counters move with the clock,
// as traffic would, with a handshake every two simulated minutes.
type fleetPlane struct {
	mu    sync.Mutex
	peers map[reconcile.Key]*fleetCounters
	idle  bool
	fleet *fleet
	reads atomic.Int64
	last  time.Time // the last read
}

type fleetCounters struct{ rx, tx int64 }

var _ reconcile.DataPlane = (*fleetPlane)(nil)

func (p *fleetPlane) Configure(context.Context, reconcile.NodeConfig) error { return nil }

func (p *fleetPlane) UpdatePeers(_ context.Context, peers []reconcile.PeerConfig) (map[reconcile.Key]error, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range peers {
		p.add(c.PublicKey)
	}
	return nil, nil
}

func (p *fleetPlane) SyncPeers(_ context.Context, all []reconcile.PeerConfig) (map[reconcile.Key]error, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	keep := make(map[reconcile.Key]bool, len(all))
	for _, c := range all {
		keep[c.PublicKey] = true
		p.add(c.PublicKey)
	}
	for k := range p.peers {
		if !keep[k] {
			delete(p.peers, k)
		}
	}
	return nil, nil
}

// add creates a peer; the caller holds p.mu.
func (p *fleetPlane) add(k reconcile.Key) {
	if _, ok := p.peers[k]; ok {
		return
	}
	p.peers[k] = &fleetCounters{}
	if c, ok := p.fleet.applied.LoadAndDelete(k); ok {
		c.(chan time.Time) <- time.Now()
	}
}

func (p *fleetPlane) RemovePeers(_ context.Context, keys []reconcile.Key) (map[reconcile.Key]error, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range keys {
		delete(p.peers, k)
	}
	return nil, nil
}

func (p *fleetPlane) Stats(context.Context) ([]reconcile.PeerStats, error) {
	p.reads.Add(1)
	// Bytes per simulated minute: active 100 KiB each way, idle 120 bytes
	// (keepalives), moved with the clock whenever the counters are read.
	perMinute := float64(100 << 10)
	if p.idle {
		perMinute = 120
	}
	now := time.Now()
	rekey := 2 * time.Minute / fleetScale
	hs := now.Truncate(rekey)
	p.mu.Lock()
	defer p.mu.Unlock()
	step := int64(perMinute * now.Sub(p.last).Minutes() * float64(fleetScale))
	if p.last.IsZero() {
		step = 0
	}
	p.last = now
	out := make([]reconcile.PeerStats, 0, len(p.peers))
	for k, c := range p.peers {
		c.rx += step
		c.tx += step
		out = append(out, reconcile.PeerStats{PublicKey: k, RxBytes: c.rx, TxBytes: c.tx, LastHandshake: hs})
	}
	return out, nil
}

func (p *fleetPlane) Epoch() string { return "fleet" }
