package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/netns"
	"github.com/waylume/waylume-node/internal/node"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/reconcile"
	"github.com/waylume/waylume-node/supabase"
	"github.com/waylume/waylume-node/supabase/realtime"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

// inProcess runs the production wiring (package node) in this process:
// store, source and reconciler against a userspace WireGuard device in the
// node namespace. src is "listen", "realtime" (postgres_changes) or
// "broadcast".
func (e *env) inProcess(tb testing.TB, src string, resync time.Duration, obs node.Observer) *node.Node {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := node.Config{
		DatabaseURL: e.nodeURL, NodeID: e.nodeID,
		Interface: e.iface, WGMode: "userspace", PrivateKeyFile: e.keyFile, Netns: e.nodeNS.Path(),
		// The device in its own process, as `waylume-node run` has it.
		DeviceCommand:   []string{binPath, "device"},
		EgressInterface: e.uplink, Isolation: true,
		ResyncInterval: resync, UsageInterval: time.Hour, Version: "e2e",
	}
	switch src {
	case "realtime":
		cfg.RealtimeMode = realtime.ModePostgresChanges
		cfg.RealtimeURL, cfg.SupabaseKey, cfg.AccessToken = e.rt.URL(), anonKey(), nodeToken(e.nodeID)
	case "broadcast":
		cfg.RealtimeMode = realtime.ModeBroadcast
		cfg.RealtimeURL, cfg.SupabaseKey, cfg.AccessToken = e.rt.URL(), anonKey(), nodeToken(e.nodeID)
	}
	n, err := node.Open(ctx, cfg, node.Runtime{Observe: obs})
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("node run: %v", err)
		}
		n.Close()
	})
	return n
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkEventToKernel: row committed (INSERT returned) to the peer
// configured on the WireGuard device, one row at a time. The Realtime
// sources also report their p99 as a multiple of LISTEN's in the same run
// (p99-x-listen).
func BenchmarkEventToKernel(b *testing.B) {
	var listenP99 time.Duration
	for _, src := range []string{"listen", "realtime", "broadcast"} {
		b.Run(src, func(b *testing.B) {
			e := newEnvPool(b, "10.8.0.1/16")
			if src != "listen" {
				e.withRealtime()
			}
			var mu sync.Mutex
			waiting := map[reconcile.Key]chan time.Time{}
			received := map[string]time.Time{} // row id -> first event for it
			e.inProcess(b, src, time.Hour, node.Observer{
				Event: func(ev events.Event) {
					if ev.Kind != events.PeerChanged {
						return
					}
					mu.Lock()
					if _, ok := received[ev.ID]; !ok {
						received[ev.ID] = time.Now()
					}
					mu.Unlock()
				},
				Applied: func(k reconcile.Key, at time.Time) {
					mu.Lock()
					if c, ok := waiting[k]; ok {
						c <- at
						delete(waiting, k)
					}
					mu.Unlock()
				},
			})
			const n = 200
			var lat, toEvent, toKernel []time.Duration
			for i := range n + 5 {
				k := newKey(b).PublicKey()
				c := make(chan time.Time, 1)
				mu.Lock()
				waiting[reconcile.Key(k)] = c
				mu.Unlock()
				id, _ := e.addPeer(k, "")
				committed := time.Now()
				select {
				case at := <-c:
					mu.Lock()
					rcv, ok := received[id]
					mu.Unlock()
					if i >= 5 && ok { // the first rows warm up the path
						lat = append(lat, at.Sub(committed))
						toEvent = append(toEvent, rcv.Sub(committed))
						toKernel = append(toKernel, at.Sub(rcv))
					}
				case <-time.After(30 * time.Second):
					mu.Lock()
					_, ok := received[id]
					mu.Unlock()
					b.Fatalf("row %d not applied within 30s (event received: %v)", i, ok)
				}
			}
			p50, p99 := percentile(lat, 0.5), percentile(lat, 0.99)
			b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(percentile(toEvent, 0.5).Microseconds())/1000, "event-p50-ms")
			b.ReportMetric(float64(percentile(toEvent, 0.99).Microseconds())/1000, "event-p99-ms")
			b.ReportMetric(float64(percentile(toKernel, 0.5).Microseconds())/1000, "apply-p50-ms")
			b.ReportMetric(float64(percentile(toKernel, 0.99).Microseconds())/1000, "apply-p99-ms")
			b.ReportMetric(float64(slices.Max(lat).Microseconds())/1000, "max-ms")
			if src == "listen" {
				listenP99 = p99
			} else if listenP99 > 0 {
				b.ReportMetric(float64(p99)/float64(listenP99), "p99-x-listen")
			}
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFullResyncNoChange10k: a full resync (snapshot from Postgres,
// validation, diff against the device and tc, nothing to change) with
// 10,000 peers applied.
func BenchmarkFullResyncNoChange10k(b *testing.B) {
	e := newEnvPool(b, "10.8.0.1/16")
	dbfix.AddPeers(b, e.db, e.nodeID, 10_000)
	n := e.inProcess(b, "listen", time.Hour, node.Observer{})
	rec, plane, store := n.Reconciler(), n.DataPlane(), n.Store()
	ctx := context.Background()
	testkit.Eventually(b, 5*time.Minute, func() error {
		st, err := plane.Stats(ctx)
		if err != nil {
			return err
		}
		if len(st) != 10_000 {
			return fmt.Errorf("%d peers on the device", len(st))
		}
		return nil
	})
	const runs = 10
	var wall, cpu, conv, convCPU time.Duration
	for range runs {
		c0, t0 := cpuTime(), time.Now()
		if err := rec.Resync(ctx); err != nil {
			b.Fatal(err)
		}
		wall += time.Since(t0)
		cpu += cpuTime() - c0
		c0, t0 = cpuTime(), time.Now()
		if err := rec.Converge(ctx); err != nil {
			b.Fatal(err)
		}
		conv += time.Since(t0)
		convCPU += cpuTime() - c0
	}
	b.ReportMetric(float64((wall/runs).Microseconds())/1000, "resync-wall-ms")
	b.ReportMetric(float64((cpu/runs).Microseconds())/1000, "resync-cpu-ms")
	b.ReportMetric(float64((conv/runs).Microseconds())/1000, "converge-wall-ms")
	b.ReportMetric(float64((convCPU/runs).Microseconds())/1000, "converge-cpu-ms")
	t0 := time.Now()
	for range runs {
		if _, err := plane.Stats(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((time.Since(t0)/runs).Microseconds())/1000, "stats-10k-ms")
	t0 = time.Now()
	for range runs {
		if _, _, err := store.Snapshot(ctx, e.nodeID); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((time.Since(t0)/runs).Microseconds())/1000, "snapshot-10k-ms")
}

// countingPlane is a data plane whose 10,000 peers' counters all move
// between flushes: the flush benchmark measures the accounting and the
// database write, not the device (stats-10k-ms above measures that).
type countingPlane struct {
	mu    sync.Mutex
	peers map[reconcile.Key]*reconcile.PeerStats
}

func (c *countingPlane) Configure(context.Context, reconcile.NodeConfig) error { return nil }
func (c *countingPlane) UpdatePeers(_ context.Context, peers []reconcile.PeerConfig) (map[reconcile.Key]error, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range peers {
		if c.peers[p.PublicKey] == nil {
			c.peers[p.PublicKey] = &reconcile.PeerStats{PublicKey: p.PublicKey}
		}
	}
	return nil, nil
}

// SyncPeers adds like UpdatePeers and, as before, never removes: the
// benchmark's peers are all desired.
func (c *countingPlane) SyncPeers(ctx context.Context, all []reconcile.PeerConfig) (map[reconcile.Key]error, error) {
	return c.UpdatePeers(ctx, all)
}

func (c *countingPlane) RemovePeers(_ context.Context, keys []reconcile.Key) (map[reconcile.Key]error, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		delete(c.peers, k)
	}
	return nil, nil
}
func (c *countingPlane) Stats(context.Context) ([]reconcile.PeerStats, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]reconcile.PeerStats, 0, len(c.peers))
	for _, p := range c.peers {
		p.RxBytes += 1000
		p.TxBytes += 3000
		p.LastHandshake = time.Now().Truncate(time.Second)
		p.Endpoint = netip.MustParseAddrPort("192.0.2.1:51820")
		out = append(out, *p)
	}
	return out, nil
}
func (c *countingPlane) Epoch() string { return "bench" }

// BenchmarkUsageFlush10k: one usage flush of 10,000 peers that all moved
// bytes: 10,000 usage rows and 10,000 status rows in one transaction.
func BenchmarkUsageFlush10k(b *testing.B) {
	db := dbfix.Migrated(b)
	nodeID := dbfix.CreateNode(b, db, netns.Name("node"), "10.8.0.1/16")
	dbfix.AddPeers(b, db, nodeID, 10_000)
	ctx := context.Background()
	store, err := supabase.OpenStore(ctx, dbfix.NodeLogin(b, db, nodeID), supabase.StoreOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	p := &countingPlane{peers: map[reconcile.Key]*reconcile.PeerStats{}}
	// IdleBytes 1: the plane's 4,000 bytes a read are under the default
	// idle threshold, whose peers a flush skips; here every peer is written.
	rec, err := reconcile.New(reconcile.Config{NodeID: nodeID, Store: store, DataPlane: p, IdleBytes: 1})
	if err != nil {
		b.Fatal(err)
	}
	if err := rec.Resync(ctx); err != nil {
		b.Fatal(err)
	}
	if err := rec.Flush(ctx); err != nil { // first: every status row inserted
		b.Fatal(err)
	}
	const runs = 5
	var wall, cpu time.Duration
	for range runs {
		c0, t0 := cpuTime(), time.Now()
		if err := rec.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		wall += time.Since(t0)
		cpu += cpuTime() - c0
	}
	// Usage is bucketed (a row per peer an hour): every flush of every peer
	// counts in its bucket's flushes.
	var flushes int
	dbfix.QueryRow(b, db, `SELECT sum(flushes) FROM waylume.peer_usage`, nil, &flushes)
	if flushes != (runs+1)*10_000 {
		b.Fatalf("usage rows record %d peer flushes, want %d", flushes, (runs+1)*10_000)
	}
	b.ReportMetric(float64((wall/runs).Microseconds())/1000, "flush-wall-ms")
	b.ReportMetric(float64((cpu/runs).Microseconds())/1000, "flush-cpu-ms")

	// The store's share: the same transaction written directly.
	sts, err := store.PeerStatuses(ctx, nodeID)
	if err != nil {
		b.Fatal(err)
	}
	end := time.Now()
	usage := make([]events.Usage, len(sts))
	for i := range sts {
		sts[i].UploadBytes += 1000
		sts[i].RxBaseline += 1000
		usage[i] = events.Usage{PeerID: sts[i].PeerID, PeriodStart: end.Add(-time.Second), PeriodEnd: end, UploadBytes: 1000}
	}
	t0 := time.Now()
	if err := store.WriteStatus(ctx, nodeID, usage, sts); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(time.Since(t0).Microseconds())/1000, "writestatus-10k-ms")
}

// BenchmarkNodeRSS: resident memory of the waylume-node process with the
// WireGuard device in another process (external wireguard-go, kernel
// mode), at 0, 1,000 and 10,000 peers: the median VmRSS over a steady
// window that spans a resync and a usage flush, and the highest.
func BenchmarkNodeRSS(b *testing.B) {
	e := newEnvPool(b, "10.8.0.1/16")
	e.extraEnv = append(e.extraEnv, "WAYLUME_LOG_LEVEL=info")
	dev := e.nodeNS.Start(b, "wireguard-go", "-f", e.iface)
	testkit.Eventually(b, 10*time.Second, func() error {
		if exited, err := dev.Exited(); exited {
			return fmt.Errorf("wireguard-go exited: %v", err)
		}
		_, err := os.Stat("/var/run/wireguard/" + e.iface + ".sock")
		return err
	})
	const resync, usage = 5 * time.Second, 10 * time.Second
	n := e.startNode("kernel", resync, usage)
	total := 0
	for _, want := range []int{0, 1000, 10_000} {
		if want > total {
			dbfix.AddPeers(b, e.db, e.nodeID, want-total)
			total = want
		}
		testkit.Eventually(b, 5*time.Minute, func() error {
			p, err := e.nodePeers()
			if err != nil {
				return err
			}
			if len(p) != want {
				return fmt.Errorf("%d peers on the device, want %d", len(p), want)
			}
			return nil
		})
		m := steadyMemory(b, []int{n.cmd.Process.Pid}, resync+usage)
		b.ReportMetric(float64(m.rss)/1024, fmt.Sprintf("rss-MB-%dpeers", want))
		b.ReportMetric(float64(m.maxRSS)/1024, fmt.Sprintf("max-rss-MB-%dpeers", want))
	}
}

func rssKB(tb testing.TB, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

func anonKey() string            { return realtimetest.AnonKey(jwtSecret) }
func nodeToken(id string) string { return realtimetest.NodeToken(jwtSecret, id, time.Hour) }
