package reconcile

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
)

// nextRetry is when the reconciler will retry its next failed row.
func (h *harness) nextRetry() (time.Time, bool) {
	h.r.mu.Lock()
	defer h.r.mu.Unlock()
	return h.r.failing.Next()
}

func (h *harness) retryDue() {
	h.t.Helper()
	if err := h.r.retryFailed(h.ctx); err != nil {
		h.t.Logf("retry: %v", err) // the fake may refuse the peer again
	}
}

// A peer the data plane refuses is retried on its own backoff, with no
// event or resync, at growing delays, alone (other peers are not resent),
// and no more once it is applied.
func TestFailedPeerRetriedWithBackoff(t *testing.T) {
	for _, whole := range []bool{false, true} {
		name := "peer refused"
		if whole {
			name = "call failed"
		}
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, peerRow(1))
			h.resync()
			const fails = 4
			p := peerRow(2)
			h.store.put(p)
			h.plane.mu.Lock()
			h.plane.tries = map[Key][]time.Time{}
			if whole {
				h.plane.fail = errFake
			} else {
				h.plane.failKey = map[Key]int{key(2): fails}
			}
			h.plane.mu.Unlock()
			if err := h.r.Handle(h.ctx, []events.Event{{Kind: events.PeerChanged, ID: p.ID, Peer: &p}}); err == nil {
				t.Fatal("a refused peer was not reported")
			}
			snaps, reads, others := h.store.snapshots, h.store.peerReads, len(h.plane.sent(key(1)))
			var delays []time.Duration
			for attempt := 1; ; attempt++ {
				due, ok := h.nextRetry()
				if !ok {
					break
				}
				if attempt > fails {
					t.Fatalf("still scheduled for a retry after %d attempts", attempt)
				}
				delays = append(delays, due.Sub(h.clk.Now()))
				tries := len(h.plane.sent(key(2)))
				h.clk.t = due.Add(-time.Millisecond)
				h.retryDue()
				if got := len(h.plane.sent(key(2))); got != tries {
					t.Fatalf("attempt %d: retried before it was due", attempt)
				}
				if whole && attempt == fails {
					h.plane.mu.Lock()
					h.plane.fail = nil
					h.plane.mu.Unlock()
				}
				h.clk.t = due
				h.retryDue()
				if got := len(h.plane.sent(key(2))); got != tries+1 && !(whole && attempt < fails) {
					t.Fatalf("attempt %d: %d sends when due, want %d", attempt, got-tries, 1)
				}
			}
			h.wantInPlane(2, true)
			if len(delays) != fails {
				t.Fatalf("%d retries, want %d", len(delays), fails)
			}
			for i := 1; i < len(delays); i++ {
				if delays[i] <= delays[i-1] {
					t.Fatalf("retry delays %v do not grow", delays)
				}
			}
			if delays[0] < 700*time.Millisecond || delays[0] > 1300*time.Millisecond {
				t.Fatalf("first retry after %v, want about 1s", delays[0])
			}
			if h.store.snapshots != snaps || h.store.peerReads != reads {
				t.Fatal("retries read the store: they must come from memory")
			}
			if got := len(h.plane.sent(key(1))); got != others {
				t.Fatalf("peer 1 resent %d times by the retries of peer 2", got-others)
			}
			// Applied: never retried again.
			tries := len(h.plane.sent(key(2)))
			h.clk.add(time.Hour)
			h.retryDue()
			if got := len(h.plane.sent(key(2))); got != tries {
				t.Fatalf("an applied peer was sent %d more times", got-tries)
			}
			h.r.mu.Lock()
			n, next := h.r.failing.Len(), h.r.nextRetry
			h.r.mu.Unlock()
			if n != 0 || !next.IsZero() {
				t.Fatalf("after success: %d failing rows, next retry %v", n, next)
			}
		})
	}
}

// shapingRefusal stands in for netctl's error when a peer's limits could
// not be installed.
type shapingRefusal struct{}

func (shapingRefusal) Error() string { return "limits not installed, peer not served" }
func (shapingRefusal) PeerReason() string {
	return "shaping: download add class: no buffer space available"
}

// A peer the data plane refuses with a reason is reported rejected with
// that reason (not active), stays so while its retries fail, also through
// a resync that decides every row again, and is active once an apply takes.
func TestRefusedPeerReportedWithReason(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.resync()
	p := peerRow(2)
	h.store.put(p)
	h.plane.mu.Lock()
	h.plane.failKey = map[Key]int{key(2): 2}
	h.plane.keyErr = shapingRefusal{}
	h.plane.mu.Unlock()
	if err := h.r.Handle(h.ctx, []events.Event{{Kind: events.PeerChanged, ID: p.ID, Peer: &p}}); err == nil {
		t.Fatal("a refused peer was not reported")
	}
	h.wantInPlane(2, false)
	h.flush()
	h.wantStatus(2, events.StateRejected, "shaping: download add class")
	h.wantStatus(1, events.StateActive, "")

	if err := h.r.Resync(h.ctx); err == nil {
		t.Fatal("the second refusal was not reported")
	}
	h.flush()
	h.wantStatus(2, events.StateRejected, "shaping: ")

	due, ok := h.nextRetry()
	if !ok {
		t.Fatal("a refused peer is not scheduled for a retry")
	}
	h.clk.t = due
	h.retryDue()
	h.wantInPlane(2, true)
	h.flush()
	h.wantStatus(2, events.StateActive, "")
	if st := h.store.statusOf(p.ID); st.Reason != "" {
		t.Fatalf("served peer keeps reason %q", st.Reason)
	}
}

// A due retry that panics does not leave the row due: the timer would
// fire again at once, for ever.
func TestRetryPanicPostponed(t *testing.T) {
	h := newHarness(t, peerRow(1))
	h.resync()
	p := peerRow(2)
	h.store.put(p)
	h.plane.failKey = map[Key]int{key(2): 1}
	if err := h.r.Handle(h.ctx, []events.Event{{Kind: events.PeerChanged, ID: p.ID, Peer: &p}}); err == nil {
		t.Fatal("a refused peer was not reported")
	}
	due, _ := h.nextRetry()
	h.clk.t = due
	h.plane.panics = 1
	if err := h.r.retryFailed(h.ctx); !errors.Is(err, errPanic) {
		t.Fatalf("retry: %v, want a contained panic", err)
	}
	if next, ok := h.nextRetry(); !ok || !next.After(due) {
		t.Fatalf("after a panic the next retry is %v (%v), want after %v", next, ok, due)
	}
	h.clk.add(time.Hour)
	h.retryDue()
	h.wantInPlane(2, true)
}

// Every data plane call made under the reconciler's lock has a deadline:
// a device that hangs does not keep the lock (nor readiness, events or
// flushes) past it.
func TestDataPlaneDeadlineReleasesLock(t *testing.T) {
	h := newHarness(t, peerRow(1))
	r, err := New(Config{NodeID: testNode, Store: h.store, DataPlane: h.plane, Now: h.clk.Now, DataPlaneTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h.r = r
	h.resync()
	n := 1
	change := func() error {
		n++
		p := peerRow(n)
		h.store.put(p)
		return r.Handle(h.ctx, []events.Event{{Kind: events.PeerChanged, ID: p.ID, Peer: &p}})
	}
	node := func() error {
		nr := testNodeRow()
		nr.MTU = 1300 + n
		n++
		return r.Handle(h.ctx, []events.Event{{Kind: events.NodeChanged, ID: nr.ID, Node: &nr}})
	}
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"SyncPeers", func() error { return r.Resync(h.ctx) }},
		{"UpdatePeers", change},
		{"Configure", node},
		{"Stats", func() error { return r.Flush(h.ctx) }},
	} {
		entered := make(chan struct{}, 1)
		h.plane.mu.Lock()
		h.plane.block, h.plane.entered = true, entered
		h.plane.mu.Unlock()
		done := make(chan error, 1)
		go func() { done <- c.call() }()
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the data plane was never called", c.name)
		}
		ready := make(chan error, 1)
		go func() { ready <- r.Ready(time.Hour) }()
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the lock is still held 10s after a 50ms data plane deadline", c.name)
		}
		if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: %v, want the data plane deadline", c.name, err)
		}
		h.plane.mu.Lock()
		h.plane.block, h.plane.entered = false, nil
		h.plane.mu.Unlock()
	}
	h.resync()
	h.wantInPlane(2, true)
}
