package reconcile

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
)

// Random traffic, flushes that fail before or after their commit, crashes
// and restarts, peers disabled and enabled (removed and re-added: counters
// restart), the device recreated: every byte that went through ends up in
// exactly one usage row.
func TestUsageExactlyOnceRandomized(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 42))
		const n = 6
		var rows []events.Peer
		for i := 1; i <= n; i++ {
			rows = append(rows, peerRow(i))
		}
		h := newHarness(t, rows...)
		h.resync()
		delivered := map[string][2]int64{}
		adopted := map[string][2]int64{} // counters taken as baseline by an adoption without a status row
		epoch := 1
		for step := range 600 {
			switch op := rng.IntN(100); {
			case op < 50:
				i := 1 + rng.IntN(n)
				rx, tx := rng.Int64N(1<<20), rng.Int64N(1<<20)
				if h.plane.traffic(key(i), rx, tx) {
					d := delivered[peerRow(i).ID]
					delivered[peerRow(i).ID] = [2]int64{d[0] + rx, d[1] + tx}
				}
			case op < 75:
				mode := rng.IntN(4)
				h.store.set(func(s *fakeStore) { s.failWrites, s.ambiguous = mode == 1, mode == 2 })
				h.clk.add(time.Second)
				err := h.r.Flush(h.ctx)
				if mode == 0 && err != nil {
					t.Fatalf("seed %d step %d: flush: %v", seed, step, err)
				}
				h.store.set(func(s *fakeStore) { s.failWrites, s.ambiguous = false, false })
			case op < 82:
				// A crash: nothing in memory survives. A peer crashed
				// before its first status row was committed is adopted
				// with its counters as baseline (docs/accounting.md, "What
				// cannot be counted"): those bytes are not billed.
				for i := 1; i <= n; i++ {
					id := peerRow(i).ID
					if rx, tx, ok := h.plane.counters(key(i)); ok && h.store.statusOf(id).PeerID == "" {
						// Counters an earlier adoption took are already out.
						prev := adopted[id]
						d := delivered[id]
						delivered[id] = [2]int64{d[0] - (rx - prev[0]), d[1] - (tx - prev[1])}
						adopted[id] = [2]int64{rx, tx}
					}
				}
				h.restart()
				h.resync()
			case op < 95:
				i := 1 + rng.IntN(n)
				p := h.store.get(peerRow(i).ID)
				p.Enabled = !p.Enabled
				h.change(p)
			case op < 97:
				// The device is recreated right after a committed flush
				// (bytes after the last flush of a destroyed device are
				// gone with it: not testable as "exact").
				h.flush()
				epoch++
				h.plane.recreate("boot1/" + string(rune('a'+epoch)))
				h.resync()
			default:
				h.resync()
			}
		}
		h.store.set(func(s *fakeStore) { s.failWrites, s.ambiguous = false, false })
		for range 3 {
			h.flush()
		}
		for i := 1; i <= n; i++ {
			id := peerRow(i).ID
			up, down := h.store.usageSum(id)
			want := delivered[id]
			if up != want[0] || down != want[1] {
				t.Fatalf("seed %d peer %d: usage %d/%d, delivered %d/%d", seed, i, up, down, want[0], want[1])
			}
			st := h.store.statusOf(id)
			if st.UploadBytes != up || st.DownloadBytes != down {
				t.Fatalf("seed %d peer %d: status totals %d/%d, usage %d/%d", seed, i, st.UploadBytes, st.DownloadBytes, up, down)
			}
		}
	}
}

// A flush requested by a state change writes the peers that changed; a
// busy peer's bytes wait in the counters for the next periodic flush,
// which counts them once.
func TestUsageRequestedFlushWritesChanges(t *testing.T) {
	h := newHarness(t, peerRow(1), peerRow(2))
	h.resync()
	h.plane.traffic(key(1), 1, 1) // the first handshakes, written at once
	h.plane.traffic(key(2), 1, 1)
	h.flush()
	h.plane.traffic(key(1), 1000, 2000)
	h.plane.traffic(key(2), 10, 20)
	p := peerRow(2)
	p.Enabled = false
	h.change(p) // cut: its final read must be written now
	h.clk.add(time.Second)
	if err := h.r.flushScope(h.ctx, scopeMust); err != nil {
		t.Fatal(err)
	}
	h.wantInPlane(2, false)
	if up, down := h.store.usageSum(peerRow(2).ID); up != 11 || down != 21 {
		t.Fatalf("leaving peer billed %d/%d, want 11/21", up, down)
	}
	if up, down := h.store.usageSum(peerRow(1).ID); up != 1 || down != 1 {
		t.Fatalf("busy peer billed %d/%d by the requested flush, want nothing until the periodic one", up, down)
	}
	h.flush()
	if up, down := h.store.usageSum(peerRow(1).ID); up != 1001 || down != 2001 {
		t.Fatalf("busy peer billed %d/%d after the periodic flush, want 1001/2001", up, down)
	}
}

// A crash between each step of a peer's removal loses and doubles nothing.
func TestUsageRemovalCrashPoints(t *testing.T) {
	for crashAt := range 4 {
		h := newHarness(t, peerRow(1))
		h.resync()
		h.plane.traffic(key(1), 1000, 2000)
		h.flush()
		h.plane.traffic(key(1), 10, 20)
		p := peerRow(1)
		p.Enabled = false
		h.change(p) // cut
		if crashAt == 0 {
			h.restart()
			h.resync()
		}
		h.clk.add(time.Second)
		// Flush commits, then removes; crash before removal = the removal
		// failing once here.
		if crashAt == 1 {
			h.plane.fail = errFake
			h.r.Flush(h.ctx)
			h.plane.fail = nil
			h.restart()
			h.resync()
		}
		h.flush()
		h.wantInPlane(1, false)
		if crashAt == 2 {
			h.restart() // removed, zero baseline not yet written
			h.resync()
		}
		p.Enabled = true
		h.change(p)
		h.flush()
		h.flush()
		h.wantInPlane(1, true)
		if crashAt == 3 {
			h.restart()
			h.resync()
		}
		h.plane.traffic(key(1), 5, 5)
		h.flush()
		if up, down := h.store.usageSum(p.ID); up != 1015 || down != 2025 {
			t.Fatalf("crash at %d: usage %d/%d, want 1015/2025", crashAt, up, down)
		}
	}
}

// Retrying the same batch after an ambiguous commit writes each row once.
func TestUsageAmbiguousCommitRetried(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.resync()
	h.plane.traffic(key(1), 100, 100)
	h.store.set(func(s *fakeStore) { s.ambiguous = true })
	h.clk.add(time.Second)
	if err := h.r.Flush(h.ctx); err == nil {
		t.Fatal("ambiguous commit not reported")
	}
	h.store.set(func(s *fakeStore) { s.ambiguous = false })
	h.plane.traffic(key(1), 1, 1)
	h.flush()
	if up, _ := h.store.usageSum(peerRow(1).ID); up != 101 {
		t.Fatalf("upload %d, want 101", up)
	}
	if n := len(h.store.usage); n != 2 {
		t.Fatalf("%d usage rows, want 2 (the retried batch once, then the rest)", n)
	}
}

// A database outage of any length loses nothing; the node keeps serving.
func TestUsageDatabaseOutage(t *testing.T) {
	h := newHarness(t, peerRow(1), peerRow(2))
	h.resync()
	h.store.set(func(s *fakeStore) { s.failWrites, s.failReads = true, true })
	for range 50 {
		h.plane.traffic(key(1), 1000, 1)
		h.clk.add(time.Minute)
		if err := h.r.Flush(h.ctx); err == nil {
			t.Fatal("flush succeeded with the database down")
		}
	}
	h.wantInPlane(1, true)
	h.store.set(func(s *fakeStore) { s.failWrites, s.failReads = false, false })
	h.flush()
	if up, down := h.store.usageSum(peerRow(1).ID); up != 50_000 || down != 50 {
		t.Fatalf("usage after outage %d/%d", up, down)
	}
}

// A peer moved to another node leaves with its last delta billed here;
// the others' bytes commit with it.
func TestUsageMovedPeerBilled(t *testing.T) {
	h := newHarness(t, peerRow(1), peerRow(2))
	h.resync()
	h.plane.traffic(key(1), 10, 10)
	h.plane.traffic(key(2), 20, 20)
	p := peerRow(1)
	p.NodeID = "00000000-0000-0000-0000-00000000000b"
	h.change(p)
	h.flush()
	h.wantInPlane(1, false)
	if up, _ := h.store.usageSum(peerRow(1).ID); up != 10 {
		t.Fatalf("moved peer's last upload %d, want 10", up)
	}
	if up, _ := h.store.usageSum(peerRow(2).ID); up != 20 {
		t.Fatalf("peer 2 usage %d, want 20", up)
	}
}

// A batch the database refuses for good (a clock ahead of the database's)
// is dropped, not retried as is: the next flush measures the same bytes
// again from the unchanged baselines and, once accepted, commits each
// byte once.
func TestUsageRefusedBatchRebuilt(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.resync()
	h.plane.traffic(key(1), 10, 10)
	h.store.set(func(s *fakeStore) { s.refuse = map[string]bool{peerRow(1).ID: true} })
	h.clk.add(time.Second)
	if err := h.r.Flush(h.ctx); !errors.Is(err, events.ErrRefused) {
		t.Fatalf("refused flush: %v", err)
	}
	h.store.set(func(s *fakeStore) { s.refuse = nil })
	h.plane.traffic(key(1), 1, 1)
	h.flush()
	if up, _ := h.store.usageSum(peerRow(1).ID); up != 11 {
		t.Fatalf("upload %d, want 11", up)
	}
}

// Kernel mode, node stopped, the row deleted and re-created with the same
// key, node started: the adopted counters were billed under the old id and
// are not billed again under the new one.
func TestUsageAdoptedKeyWithoutStatusNotBilledTwice(t *testing.T) {
	h := newHarness(t, peerRow(1))
	again := h.recreateWithSameKey()
	h.restart()
	h.resync()
	h.wantRecreatedBilledOnce(again)
}

// recreateWithSameKey bills 1000/2000 bytes to peer 1, then deletes its
// row and inserts another with its key, as an app might while the node is
// down; it returns the new row.
func (h *harness) recreateWithSameKey() events.Peer {
	h.t.Helper()
	h.resync()
	h.plane.traffic(key(1), 1000, 2000)
	h.flush()
	h.store.del(peerRow(1).ID)
	again := peerRow(9)
	again.PublicKey = peerRow(1).PublicKey
	h.store.put(again)
	return again
}

// wantRecreatedBilledOnce checks, after the node met the re-created row
// again, that the adopted counters stay billed to the old row only.
func (h *harness) wantRecreatedBilledOnce(again events.Peer) {
	h.t.Helper()
	h.flush()
	h.plane.traffic(key(1), 5, 7)
	h.flush()
	if up, down := h.store.usageSum(again.ID); up != 5 || down != 7 {
		h.t.Fatalf("re-created row billed %d/%d, want 5/7 (the adopted counters were billed under the old id)", up, down)
	}
	if up, down := h.store.usageSum(peerRow(1).ID); up != 1000 || down != 2000 {
		h.t.Fatalf("old row billed %d/%d, want 1000/2000", up, down)
	}
}

// A peer the node wrongly believes absent (an apply that failed as a whole
// after changing the device) is found by the next flush and accounted from
// its baselines; its counters are never zeroed under it.
func TestUsageTrustsDeviceOverMemory(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.resync()
	h.plane.traffic(key(1), 100, 100)
	h.flush()
	h.plane.traffic(key(1), 5, 5)
	h.r.mu.Lock()
	h.r.peers[peerRow(1).ID].inPlane = false // as after an apply error
	h.r.mu.Unlock()
	h.flush()
	h.flush()
	if up, down := h.store.usageSum(peerRow(1).ID); up != 105 || down != 105 {
		t.Fatalf("usage %d/%d, want 105/105", up, down)
	}
}

// After a restart the quota counts what was used since quota_reset_at
// before the restart too.
func TestQuotaAcrossRestart(t *testing.T) {
	p := peerRow(1)
	p.QuotaBytes = 1000
	p.QuotaResetAt = time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	h := newHarness(t, p)
	h.resync()
	h.plane.traffic(key(1), 300, 300)
	h.flush()
	h.restart()
	h.resync()
	h.wantInPlane(1, true)
	h.plane.traffic(key(1), 250, 250)
	h.flush()
	h.flush()
	h.wantInPlane(1, false)
	h.wantStatus(1, events.StateBlocked, "quota_exceeded")
}

// The device is recreated under a running node (new epoch, no peers):
// the next flush notices, and the peers come back at once, counted from
// zero.
func TestDeviceRecreatedUnderRunningNode(t *testing.T) {
	h := newHarness(t, peerRow(1), peerRow(2))
	h.resync()
	h.plane.traffic(key(1), 100, 100)
	h.flush()
	h.plane.recreate("boot1/99")
	h.flush()
	h.wantInPlane(1, true)
	h.wantInPlane(2, true)
	h.plane.traffic(key(1), 7, 7)
	h.flush()
	if up, _ := h.store.usageSum(peerRow(1).ID); up != 107 {
		t.Fatalf("usage %d, want 107", up)
	}
}

// With the default idle settings a busy peer is written at every flush,
// an idle one (keepalives) every IdleInterval; the idle bytes wait in the
// counters, count against the quota meanwhile, and the final flush before
// a stop writes them.
func TestUsageIdlePeersOnSlowCadence(t *testing.T) {
	idle := peerRow(2)
	idle.QuotaBytes = 1500
	idle.QuotaResetAt = time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	h := newHarness(t, peerRow(1), idle)
	r, err := New(Config{NodeID: testNode, Store: h.store, DataPlane: h.plane, Now: h.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	h.r = r
	h.resync()
	h.flush() // the new peers' first status rows
	rows := func(id string) (n int) {
		h.store.mu.Lock()
		defer h.store.mu.Unlock()
		for _, u := range h.store.usage {
			if u.PeerID == id {
				n++
			}
		}
		return n
	}
	for range 10 {
		h.plane.traffic(key(1), 1<<20, 1<<20)
		h.plane.traffic(key(2), 64, 64)
		h.clk.add(time.Minute)
		h.flush()
	}
	if busy, quiet := rows(peerRow(1).ID), rows(idle.ID); busy != 10 || quiet != 2 {
		t.Fatalf("usage rows: busy peer %d (want 10, one a flush), idle peer %d (want 2, one per 5 minutes, the default with 60 s flushes)", busy, quiet)
	}
	// Unwritten idle bytes count against the quota.
	h.plane.traffic(key(2), 300, 0)
	h.clk.add(time.Second)
	h.flush()
	h.flush()
	h.wantInPlane(2, false)
	h.wantStatus(2, events.StateBlocked, "quota_exceeded")
	if up, down := h.store.usageSum(idle.ID); up != 10*64+300 || down != 10*64 {
		t.Fatalf("idle peer billed %d/%d, want %d/%d once it left", up, down, 10*64+300, 10*64)
	}
	h.plane.traffic(key(1), 5, 5)
	if err := h.r.flushScope(h.ctx, scopeAll); err != nil {
		t.Fatal(err)
	}
	if up, _ := h.store.usageSum(peerRow(1).ID); up != 10<<20+5 {
		t.Fatalf("busy peer billed %d after the final flush, want %d", up, 10<<20+5)
	}
}
