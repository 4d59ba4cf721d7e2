package reconcile

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
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
		IsNotFound:     func(err error) bool { return errors.Is(err, errNotFound) },
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
