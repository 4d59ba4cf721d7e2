package reconcile

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/events"
)

func (s *fakeStore) snapshotCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshots
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// Anyone may NOTIFY on a node's channel. A flood of well-formed hints
// (resyncs, and more unknown peer ids than a batch reads one by one) does
// not make the node snapshot back to back: event-asked snapshots run at
// most once per EventResyncInterval (default 5s), coalesced, and counted. A
// real change made during the flood is applied by the next one.
func TestEventFloodDoesNotSnapshotBackToBack(t *testing.T) {
	reg := prometheus.NewRegistry()
	store, plane := newFakeStore(testNodeRow()), newFakePlane()
	store.put(peerRow(1))
	r, err := New(Config{NodeID: testNode, Store: store, DataPlane: plane, Registerer: reg,
		ResyncInterval: time.Hour, UsageInterval: time.Hour, HeartbeatInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	waitFor(t, "first resync", func() bool { _, ok := plane.has(key(1)); return ok })
	base := store.snapshotCount()

	sink := r.Sink()
	const flood = 2 * time.Second
	start := time.Now()
	sent, changed := 0, false
	for time.Since(start) < flood {
		for range 100 {
			if sent%10 == 0 {
				sink.Add(events.Event{Kind: events.Resync, Source: "listen"})
			} else {
				id := fmt.Sprintf("%08x-0000-4000-8000-%012x", rand.Uint32(), rand.Uint64()&(1<<48-1))
				sink.Add(events.Event{Kind: events.PeerChanged, ID: id, Source: "listen"})
			}
			sent++
		}
		// Halfway through by the clock, not by a count of events: how many
		// a slow machine (or -race) sends in the flood varies tenfold.
		if !changed && time.Since(start) >= flood/2 {
			changed = true
			p := peerRow(2)
			store.put(p)
			sink.Add(events.Event{Kind: events.PeerChanged, ID: p.ID, Source: "listen"})
		}
		time.Sleep(time.Millisecond) // the flood's pace, not synchronisation
	}
	during := store.snapshotCount() - base
	t.Logf("%d events in %s: %d snapshots", sent, flood, during)
	if during > 1 {
		t.Errorf("%d snapshots during a %s flood, want at most 1 (one per 5s)", during, flood)
	}
	waitFor(t, "the change made during the flood", func() bool { _, ok := plane.has(key(2)); return ok })
	if n := store.snapshotCount() - base; n > 2 {
		t.Errorf("%d snapshots until the change was applied, want at most 2", n)
	}
	if d := counterValue(t, reg, "waylume_event_resyncs_delayed_total"); d < 1 {
		t.Errorf("waylume_event_resyncs_delayed_total = %v, want at least 1", d)
	}
	if n := counterValue(t, reg, "waylume_event_resyncs_total"); n < 1 || n > 3 {
		t.Errorf("waylume_event_resyncs_total = %v, want 1 to 3", n)
	}
}
