package reconcile

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/retry"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
}

// Run end to end on the fakes, under -race: events from concurrent
// producers, timers, and the shutdown sequence (final flush, offline).
func TestRunEventsAndShutdown(t *testing.T) {
	store, plane := newFakeStore(testNodeRow()), newFakePlane()
	store.put(peerRow(1))
	r, err := New(Config{NodeID: testNode, Store: store, DataPlane: plane,
		ResyncInterval: 50 * time.Millisecond, UsageInterval: 30 * time.Millisecond, HeartbeatInterval: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitFor(t, "first resync", func() bool { _, ok := plane.has(key(1)); return ok })

	sink := r.Sink()
	for g := range 4 {
		go func() {
			for i := range 50 {
				n := 2 + (g*50+i)%100
				p := peerRow(n)
				store.put(p)
				sink.Add(events.Event{Kind: events.PeerChanged, ID: p.ID, Source: "listen"})
			}
		}()
	}
	waitFor(t, "100 peers applied", func() bool {
		for n := 2; n < 102; n++ {
			if _, ok := plane.has(key(n)); !ok {
				return false
			}
		}
		return true
	})
	plane.traffic(key(5), 123, 456)
	waitFor(t, "usage flushed", func() bool { up, _ := store.usageSum(peerRow(5).ID); return up == 123 })
	plane.traffic(key(5), 1, 1)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if up, down := store.usageSum(peerRow(5).ID); up != 124 || down != 457 {
		t.Fatalf("final flush missing: %d/%d", up, down)
	}
	store.mu.Lock()
	last := store.heartbeats[len(store.heartbeats)-1]
	store.mu.Unlock()
	if last.Status != "offline" || last.Peers != 101 {
		t.Fatalf("last heartbeat %+v", last)
	}
	if _, ok := plane.has(key(1)); !ok {
		t.Fatal("shutdown removed peers")
	}
}

// Events lost by the source are repaired by the periodic resync.
func TestRunLostEventsRepairedByResync(t *testing.T) {
	store, plane := newFakeStore(testNodeRow()), newFakePlane()
	r, err := New(Config{NodeID: testNode, Store: store, DataPlane: plane, ResyncInterval: 30 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	store.put(peerRow(3)) // no event
	waitFor(t, "resync applies the row", func() bool { _, ok := plane.has(key(3)); return ok })
	if err := r.Ready(time.Minute); err != nil {
		t.Fatalf("not ready: %v", err)
	}
}

// Every metric of the reconciler's interface is registered on the injected
// registry, with values that follow the state.
func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	store, plane := newFakeStore(testNodeRow()), newFakePlane()
	bad := peerRow(2)
	bad.PublicKey = "x"
	store.put(peerRow(1))
	store.put(bad)
	r, err := New(Config{NodeID: testNode, Store: store, DataPlane: plane, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r.Sink().Add(events.Event{Kind: events.Resync, Source: "listen"})
	if err := r.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	plane.traffic(key(1), 10, 20)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf
	}
	for _, name := range []string{"waylume_peers", "waylume_active_sessions", "waylume_peer_upload_bytes_total",
		"waylume_peer_download_bytes_total", "waylume_peer_handshake_age_seconds", "waylume_reconcile_duration_seconds",
		"waylume_reconcile_errors_total", "waylume_events_received_total", "waylume_events_applied_total",
		"waylume_events_coalesced_total", "waylume_usage_flush_duration_seconds", "waylume_usage_flush_errors_total",
		"waylume_usage_backlog_bytes", "waylume_event_resyncs_total", "waylume_event_resyncs_delayed_total"} {
		if got[name] == nil {
			t.Errorf("metric %s missing", name)
		}
	}
	for _, m := range got["waylume_peers"].GetMetric() {
		want := map[string]float64{"active": 1, "rejected": 1, "blocked": 0}[m.GetLabel()[0].GetValue()]
		if m.GetGauge().GetValue() != want {
			t.Errorf("waylume_peers{%s} = %v, want %v", m.GetLabel()[0].GetValue(), m.GetGauge().GetValue(), want)
		}
	}
	if v := got["waylume_peer_download_bytes_total"].GetMetric()[0].GetCounter().GetValue(); v != 20 {
		t.Errorf("download bytes %v, want 20", v)
	}
}

// An expiry that arrives by event is enforced at its instant, not at the
// next tick of some other timer.
func TestRunExpiryArrivesByEvent(t *testing.T) {
	store, plane := newFakeStore(testNodeRow()), newFakePlane()
	r, err := New(Config{NodeID: testNode, Store: store, DataPlane: plane,
		ResyncInterval: time.Hour, UsageInterval: time.Hour, HeartbeatInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	waitFor(t, "first resync", func() bool { return r.Ready(time.Minute) == nil })
	p := peerRow(1)
	store.put(p)
	r.Sink().Add(events.Event{Kind: events.PeerChanged, ID: p.ID, Peer: &p})
	waitFor(t, "peer applied and its status written", func() bool { return store.statusOf(p.ID).State == events.StateActive })
	// Only the expiry changes: no state change, nothing else wakes the timers.
	p.ExpiresAt = time.Now().Add(700 * time.Millisecond)
	p.UpdatedAt = p.UpdatedAt.Add(time.Second)
	store.put(p)
	r.Sink().Add(events.Event{Kind: events.PeerChanged, ID: p.ID, Peer: &p})
	start := time.Now()
	waitFor(t, "peer cut at expiry", func() bool { c, ok := plane.has(key(1)); return !ok || len(c.AllowedIPs) == 0 })
	if late := time.Since(p.ExpiresAt); late > 2*time.Second {
		t.Fatalf("cut %v after expires_at (waited %v)", late, time.Since(start))
	}
}

// Run's timer retries a peer the data plane refused, by itself: no event
// and no resync comes, and each delay is longer than the one before.
func TestRunRetriesRefusedPeer(t *testing.T) {
	store, plane := newFakeStore(testNodeRow()), newFakePlane()
	r, err := New(Config{NodeID: testNode, Store: store, DataPlane: plane,
		ResyncInterval: time.Hour, UsageInterval: time.Hour, HeartbeatInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	const initial = 40 * time.Millisecond
	r.failing = retry.NewKeyed[string](retry.Policy{Initial: initial, Max: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	waitFor(t, "first resync", func() bool { return r.Ready(time.Minute) == nil })
	plane.mu.Lock()
	plane.failKey = map[Key]int{key(1): 3}
	plane.tries = map[Key][]time.Time{}
	plane.mu.Unlock()
	p := peerRow(1)
	store.put(p)
	r.Sink().Add(events.Event{Kind: events.PeerChanged, ID: p.ID, Peer: &p})
	waitFor(t, "the refused peer applied by its retries", func() bool { c, ok := plane.has(key(1)); return ok && len(c.AllowedIPs) > 0 })

	sent := plane.sent(key(1))
	if len(sent) != 4 {
		t.Fatalf("peer sent %d times, want 4 (3 refusals, then applied)", len(sent))
	}
	store.mu.Lock()
	snaps := store.snapshots
	store.mu.Unlock()
	if snaps != 1 {
		t.Fatalf("%d snapshots, want 1: the retries must not wait for a resync", snaps)
	}
	// A timer never fires early: each gap is at least its delay, and the
	// delays double (less 30% jitter).
	for i := 1; i < len(sent); i++ {
		if gap, least := sent[i].Sub(sent[i-1]), time.Duration(float64(initial<<(i-1))*0.7); gap < least {
			t.Fatalf("retry %d came %v after the previous send, want at least %v", i, gap, least)
		}
	}
	r.mu.Lock()
	n, next := r.failing.Len(), r.nextRetry
	r.mu.Unlock()
	if n != 0 || !next.IsZero() {
		t.Fatalf("after success: %d failing rows, next retry at %v; want none", n, next)
	}
}

// AfterBulk runs after the periodic bulk work, so the memory it made is
// garbage by then: the first call comes after the first resync applied the
// rows, and the calls go on with every resync and flush.
func TestAfterBulk(t *testing.T) {
	store, plane := newFakeStore(testNodeRow()), newFakePlane()
	store.put(peerRow(1))
	calls := make(chan bool, 100)
	r, err := New(Config{NodeID: testNode, Store: store, DataPlane: plane,
		ResyncInterval: 20 * time.Millisecond, UsageInterval: 20 * time.Millisecond, HeartbeatInterval: time.Hour,
		AfterBulk: func() {
			_, applied := plane.has(key(1))
			select {
			case calls <- applied:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for i := range 5 {
		select {
		case applied := <-calls:
			if !applied {
				t.Fatalf("AfterBulk call %d before the first resync applied the rows", i+1)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d AfterBulk calls in 10 s, want 5", i)
		}
	}
}
