package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/events"
)

// saved is what the running reconciler would save, through JSON as the
// state file keeps it.
func (h *harness) saved() *LocalState {
	h.t.Helper()
	h.r.mu.Lock()
	s := h.r.localStateLocked()
	h.r.mu.Unlock()
	if s == nil {
		h.t.Fatal("nothing to save")
	}
	var buf bytes.Buffer
	if _, err := s.WriteTo(&buf); err != nil {
		h.t.Fatal(err)
	}
	var out LocalState
	if err := json.Unmarshal(buf.Bytes(), &out); err != nil {
		h.t.Fatal(err)
	}
	// The streamed form reads back as the whole-value encoding does.
	whole, err := json.Marshal(s)
	if err != nil {
		h.t.Fatal(err)
	}
	var want LocalState
	if err := json.Unmarshal(whole, &want); err != nil {
		h.t.Fatal(err)
	}
	if !reflect.DeepEqual(out, want) {
		h.t.Fatalf("streamed state differs:\n%+v\nwant\n%+v", out, want)
	}
	return &out
}

func (h *harness) restore(s *LocalState) {
	h.t.Helper()
	if err := h.r.Restore(h.ctx, s); err != nil {
		h.t.Fatalf("restore: %v", err)
	}
}

func (h *harness) down(down bool) {
	h.store.set(func(s *fakeStore) { s.failReads, s.failWrites = down, down })
}

func (h *harness) wantCut(n int) {
	h.t.Helper()
	cfg, ok := h.plane.has(key(n))
	if !ok || len(cfg.AllowedIPs) != 0 {
		h.t.Fatalf("peer %d: on the device %v with %v, want it cut", n, ok, cfg.AllowedIPs)
	}
}

func (h *harness) wantUsage(n int, up, down int64) {
	h.t.Helper()
	id := peerRow(n).ID
	if u, d := h.store.usageSum(id); u != up || d != down {
		h.t.Fatalf("peer %d usage %d/%d, want %d/%d", n, u, d, up, down)
	}
	if st := h.store.statusOf(id); st.UploadBytes != up || st.DownloadBytes != down {
		h.t.Fatalf("peer %d status totals %d/%d, want %d/%d", n, st.UploadBytes, st.DownloadBytes, up, down)
	}
}

// A userspace node killed and started with the database down: the saved
// rows go back on the new device, expiry holds by the node's clock, and
// the quota counts the saved usage plus what the new device counted.
// Nothing is flushed meanwhile.
func TestRestoreEnforcesExpiryAndQuota(t *testing.T) {
	h := newHarness(t)
	expiring, limited := peerRow(2), peerRow(3)
	expiring.ExpiresAt = h.clk.Now().Add(time.Hour)
	limited.QuotaBytes = 1000
	for _, p := range []events.Peer{peerRow(1), expiring, limited} {
		h.store.put(p)
	}
	h.resync()
	h.plane.traffic(key(3), 300, 300)
	h.flush()
	saved := h.saved()

	h.plane.recreate("boot1/new") // the device died with the process
	h.down(true)
	h.restart()
	h.restore(saved)
	for n := 1; n <= 3; n++ {
		h.wantInPlane(n, true)
	}
	if err := h.r.Ready(time.Hour); !errors.Is(err, ErrServingLocalState) {
		t.Fatalf("Ready while serving from local state: %v", err)
	}

	// 600 saved + 200 counted since: under the quota.
	h.plane.traffic(key(3), 100, 100)
	if err := h.r.refreshLocal(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.wantInPlane(3, true)
	// + 200 more: 1000, the quota.
	h.plane.traffic(key(3), 100, 100)
	if err := h.r.refreshLocal(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.wantCut(3)

	h.clk.add(2 * time.Hour)
	if err := h.r.Converge(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.wantCut(2)
	h.wantInPlane(1, true)

	// No flush while the baselines are unknown, even with writes possible.
	h.store.set(func(s *fakeStore) { s.failWrites = false })
	writes := h.store.writes
	if err := h.r.Flush(h.ctx); err != nil {
		t.Fatal(err)
	}
	if h.store.writes != writes {
		t.Fatal("a flush wrote usage before the status rows were loaded")
	}
}

// When the database returns, the saved baselines are never used: the
// status rows are loaded from it and every byte is counted once, whether
// the saved state was older than the database's (the process died between
// a commit and its save) or the device is new.
func TestRestoreThenLoadCountsOnce(t *testing.T) {
	t.Run("device survived, save older than the database", func(t *testing.T) {
		h := newHarness(t, peerRow(1), peerRow(2), peerRow(3))
		h.resync()
		h.plane.traffic(key(1), 100, 100)
		h.plane.traffic(key(2), 10, 10)
		h.flush()
		saved := h.saved()
		h.plane.traffic(key(1), 50, 50)
		h.flush() // committed, never saved
		h.plane.traffic(key(1), 20, 20)
		// Peer 3 left the device after the save (the key is absent now).
		if _, err := h.plane.RemovePeers(h.ctx, []Key{key(3)}); err != nil {
			t.Fatal(err)
		}

		h.down(true)
		h.restart()
		h.restore(saved)
		h.wantInPlane(1, true)
		h.wantInPlane(2, true)
		h.wantInPlane(3, false) // not re-added on a device that outlived the process
		h.plane.traffic(key(1), 7, 7)
		h.plane.traffic(key(2), 5, 5)
		// Peer 2 is deleted while the database is unreachable to the node.
		h.store.del(peerRow(2).ID)

		h.down(false)
		h.resync()
		h.flush()
		h.wantUsage(1, 177, 177)
		// The deleted peer's bytes since its last commit cannot be
		// attributed (its status row is gone): it is removed, nothing is
		// counted against a zero baseline.
		if up, down := h.store.usageSum(peerRow(2).ID); up != 10 || down != 10 {
			t.Fatalf("deleted peer usage %d/%d, want 10/10", up, down)
		}
		if _, ok := h.plane.has(key(2)); ok {
			t.Fatal("the deleted peer is still on the device")
		}
		h.wantInPlane(3, true) // the database decides it
		if err := h.r.Ready(time.Hour); err != nil {
			t.Fatalf("Ready after the database answered: %v", err)
		}
	})
	t.Run("device recreated", func(t *testing.T) {
		h := newHarness(t, peerRow(1))
		h.resync()
		h.plane.traffic(key(1), 100, 100)
		h.flush()
		saved := h.saved()
		h.plane.traffic(key(1), 30, 30) // unflushed: gone with the device
		h.plane.recreate("boot1/new")
		h.down(true)
		h.restart()
		h.restore(saved)
		h.plane.traffic(key(1), 40, 40)
		if err := h.r.refreshLocal(h.ctx); err != nil {
			t.Fatal(err)
		}
		h.down(false)
		h.resync()
		h.flush()
		h.wantUsage(1, 140, 140)
		h.plane.traffic(key(1), 1, 2)
		h.flush()
		h.wantUsage(1, 141, 142)
	})
}

// A peer cut while serving from local state (expired) whose row still
// exists: its final bytes are flushed once the database is back, then it
// is removed, as at any removal.
func TestRestoreCutPeerFlushedOnReturn(t *testing.T) {
	h := newHarness(t)
	p := peerRow(1)
	p.ExpiresAt = h.clk.Now().Add(time.Hour)
	h.store.put(p)
	h.resync()
	h.plane.traffic(key(1), 10, 10)
	h.flush()
	saved := h.saved()
	h.plane.traffic(key(1), 5, 5)
	h.down(true)
	h.restart()
	h.restore(saved)
	h.clk.add(2 * time.Hour)
	if err := h.r.Converge(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.wantCut(1)
	h.down(false)
	h.resync()
	h.flush()
	h.flush()
	h.wantUsage(1, 15, 15)
	h.wantStatus(1, events.StateBlocked, reasonExpired)
	if _, ok := h.plane.has(key(1)); ok {
		t.Fatal("the expired peer is still on the device")
	}
}

func TestRestoreRefused(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.resync()
	saved := h.saved()
	if err := h.r.Restore(h.ctx, saved); err == nil {
		t.Error("a restore after the database answered was taken")
	}
	h.restart()
	foreign := *saved
	foreign.Node.ID = "00000000-0000-0000-0000-00000000000b"
	if err := h.r.Restore(h.ctx, &foreign); err == nil {
		t.Error("another node's state was restored")
	}
}

// Run saves after the first resync and the flushes, at most once per
// SaveInterval, and at shutdown; a node serving a restored state that
// never reached the database saves nothing over the file.
func TestRunSavesLocalState(t *testing.T) {
	store, plane := newFakeStore(testNodeRow()), newFakePlane()
	store.put(peerRow(1))
	var mu sync.Mutex
	var saves []*LocalState
	save := func(s *LocalState) error {
		mu.Lock()
		defer mu.Unlock()
		saves = append(saves, s)
		return nil
	}
	last := func() *LocalState {
		mu.Lock()
		defer mu.Unlock()
		if len(saves) == 0 {
			return nil
		}
		return saves[len(saves)-1]
	}
	r, err := New(Config{NodeID: testNode, Store: store, DataPlane: plane, SaveLocal: save,
		ResyncInterval: time.Hour, UsageInterval: 20 * time.Millisecond, SaveInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitFor(t, "a save holding the row", func() bool { s := last(); return s != nil && len(s.Peers) == 1 })
	plane.traffic(key(1), 123, 456)
	waitFor(t, "a save holding the committed usage", func() bool {
		s := last()
		return s != nil && len(s.Status) == 1 && s.Status[0].UploadBytes == 123 && s.Status[0].RxBaseline == 123
	})
	plane.traffic(key(1), 1, 1)
	mu.Lock()
	before := len(saves)
	mu.Unlock()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := len(saves)
	mu.Unlock()
	if s := last(); n <= before || s.Status[0].UploadBytes != 124 {
		t.Fatalf("no save after the final flush: %d saves, last %+v", n, s.Status)
	}

	// Restored and never reached the database: no save.
	saved := last()
	store.set(func(s *fakeStore) { s.failReads, s.failWrites = true, true })
	mu.Lock()
	saves = nil
	mu.Unlock()
	reg := prometheus.NewRegistry()
	r, err = New(Config{NodeID: testNode, Store: store, DataPlane: plane, SaveLocal: save, Registerer: reg,
		ResyncInterval: time.Hour, UsageInterval: 20 * time.Millisecond, SaveInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Restore(context.Background(), saved); err != nil {
		t.Fatal(err)
	}
	if v := servingGauge(t, reg); v != 1 {
		t.Fatalf("waylume_local_state_serving %v while serving, want 1", v)
	}
	ctx, cancel = context.WithCancel(context.Background())
	go func() { done <- r.Run(ctx) }()
	time.Sleep(100 * time.Millisecond) // several usage intervals and resync retries (no synchronisation implied)
	mu.Lock()
	early := len(saves)
	mu.Unlock()
	if early != 0 {
		t.Fatalf("%d saves while serving the restored state", early)
	}
	store.set(func(s *fakeStore) { s.failReads, s.failWrites = false, false })
	waitFor(t, "the database's rows replace the saved state", func() bool { return r.Ready(time.Hour) == nil })
	if v := servingGauge(t, reg); v != 0 {
		t.Fatalf("waylume_local_state_serving %v after the first resync, want 0", v)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(saves) == 0 {
		t.Fatal("no save once the database answered")
	}
}

// servingGauge reads waylume_local_state_serving from the registry.
func servingGauge(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "waylume_local_state_serving" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("waylume_local_state_serving is not registered")
	return 0
}

// The quota counts from the database's figures once it answers, never
// from the saved ones: here the saved state predates a quota reset the
// previous process applied and committed usage after. Offline, the saved
// view blocks the peer; the database's unblocks it.
func TestRestoreQuotaFromDatabaseOnReturn(t *testing.T) {
	h := newHarness(t)
	p := peerRow(1)
	p.QuotaBytes = 1000
	h.store.put(p)
	h.resync()
	h.plane.traffic(key(1), 400, 400)
	h.flush()
	saved := h.saved()
	h.clk.add(time.Minute)
	p.QuotaResetAt = h.clk.Now()
	h.change(p)
	h.plane.traffic(key(1), 150, 150)
	h.flush() // 300 since the reset, committed, never saved

	h.down(true)
	h.restart()
	h.restore(saved)
	h.wantCut(1) // the saved view: 800 before a reset it does not know of, + 300
	h.down(false)
	h.resync()
	h.wantInPlane(1, true)            // the database's: 300 since the reset
	h.plane.traffic(key(1), 200, 200) // 700 since the reset
	h.flush()
	h.wantInPlane(1, true)
	h.plane.traffic(key(1), 150, 150) // 1000 since the reset
	h.flush()
	h.wantCut(1)
}

// The cost of one save at 10,000 peers: the copy under the lock and its
// JSON encoding (what the state file writes).
func BenchmarkLocalStateSave10k(b *testing.B) {
	h := newBenchHarness(b, 10_000)
	for i := range 10_000 {
		h.plane.traffic(benchKey(i), 100, 100)
	}
	h.clk.add(time.Second)
	if err := h.r.Flush(h.ctx); err != nil {
		b.Fatal(err)
	}
	var size countWriter
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		h.r.mu.Lock()
		s := h.r.localStateLocked()
		h.r.mu.Unlock()
		size = 0
		if _, err := s.WriteTo(&size); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(size)/1e6, "MB/file")
}

type countWriter int

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

// Kernel mode, node stopped, the row deleted and re-created with the same
// key, node started with the database down: the saved state adopts the key
// under the old id; when the database answers, the new row finds counters
// billed under the old id and does not bill them again.
func TestRestoreRecreatedRowNotBilledTwice(t *testing.T) {
	h := newHarness(t, peerRow(1))
	again := h.recreateWithSameKey()
	saved := h.saved() // saved before the row changed: it holds peer 1
	h.down(true)
	h.restart()
	h.restore(saved)
	h.wantInPlane(1, true)
	h.plane.traffic(key(1), 3, 4) // while serving from local state
	h.down(false)
	h.resync()
	h.wantRecreatedBilledOnce(again)
}
