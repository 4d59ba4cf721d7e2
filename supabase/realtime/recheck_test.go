package realtime

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/testkit"
)

type recordSink struct {
	mu  sync.Mutex
	evs []events.Event
}

func (s *recordSink) Add(e events.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evs = append(s.evs, e)
}

func (s *recordSink) got() []events.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]events.Event(nil), s.evs...)
}

// A row-less hint comes again after the delay, without its commit time;
// hints within one delay come again together, once per row; hints that
// carry their row, deletions and resyncs come once.
func TestRecheckDeliversRowlessHintsTwice(t *testing.T) {
	sink := &recordSink{}
	r := newRecheck(sink, 20*time.Millisecond)
	defer r.stop()
	commit := time.Now()
	r.add(events.Event{Kind: events.PeerChanged, ID: "a", Commit: commit})
	r.add(events.Event{Kind: events.PeerChanged, ID: "a", Commit: commit})
	r.add(events.Event{Kind: events.NodeChanged, ID: "n"})
	r.add(events.Event{Kind: events.PeerChanged, ID: "b", Peer: &events.Peer{ID: "b"}})
	r.add(events.Event{Kind: events.PeerDeleted, ID: "c"})
	r.add(events.Event{Kind: events.Resync})
	if n := len(sink.got()); n != 6 {
		t.Fatalf("%d events delivered at once, want 6", n)
	}
	testkit.Eventually(t, 5*time.Second, func() error {
		if n := len(sink.got()); n < 8 {
			return fmt.Errorf("%d events delivered, want 8", n)
		}
		return nil
	})
	again := map[string]int{}
	for _, e := range sink.got()[6:] {
		again[e.ID]++
		if !e.Commit.IsZero() {
			t.Errorf("recheck of %s carries a commit time", e.ID)
		}
	}
	if again["a"] != 1 || again["n"] != 1 || len(again) != 2 {
		t.Errorf("delivered again: %v, want a and n once each", again)
	}
	// Nothing else comes: a fresh hint's recheck proves the timer ran dry.
	r.add(events.Event{Kind: events.PeerChanged, ID: "d"})
	testkit.Eventually(t, 5*time.Second, func() error {
		evs := sink.got()
		if last := evs[len(evs)-1]; len(evs) != 10 || last.ID != "d" {
			return errors.New("no single recheck of d")
		}
		return nil
	})
}

// After stop nothing pending is delivered.
func TestRecheckStop(t *testing.T) {
	sink := &recordSink{}
	r := newRecheck(sink, time.Hour)
	r.add(events.Event{Kind: events.PeerChanged, ID: "a"})
	r.stop()
	r.add(events.Event{Kind: events.PeerChanged, ID: "b"})
	r.mu.Lock()
	pending, timer := len(r.pending), r.timer
	r.mu.Unlock()
	if pending != 0 || timer != nil {
		t.Errorf("after stop: %d pending, timer %v", pending, timer != nil)
	}
	if n := len(sink.got()); n != 2 {
		t.Errorf("%d delivered, want the 2 immediate ones", n)
	}
}
