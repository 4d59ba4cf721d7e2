package events

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func get(t *testing.T, q *Queue) []Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, ok := q.Get(ctx)
	if !ok {
		t.Fatal("Get: no batch")
	}
	return b
}

func ids(b []Event) []string {
	var s []string
	for _, e := range b {
		s = append(s, e.Kind.String()+":"+e.ID)
	}
	return s
}

func TestQueueLatestWins(t *testing.T) {
	var coalesced int
	q := NewQueue(QueueOptions{OnCoalesce: func(n int) { coalesced += n }})
	q.Add(Event{Kind: PeerChanged, ID: "a", Source: "1"})
	q.Add(Event{Kind: PeerChanged, ID: "b"})
	q.Add(Event{Kind: PeerDeleted, ID: "a", Source: "2"})
	q.Add(Event{Kind: NodeChanged, ID: "n"})
	q.Add(Event{Kind: NodeChanged, ID: "n", Source: "x"})
	b := get(t, q)
	if got, want := fmt.Sprint(ids(b)), "[peer_deleted:a peer_changed:b node_changed:n]"; got != want {
		t.Fatalf("batch %s, want %s", got, want)
	}
	if b[0].Source != "2" || b[2].Source != "x" {
		t.Errorf("latest event did not win: %+v", b)
	}
	if coalesced != 2 {
		t.Errorf("coalesced %d, want 2", coalesced)
	}
	q.Done(b)
	if q.Len() != 0 {
		t.Errorf("Len %d after Done", q.Len())
	}
}

func TestQueueResyncSupersedes(t *testing.T) {
	q := NewQueue(QueueOptions{})
	for i := range 100 {
		q.Add(Event{Kind: PeerChanged, ID: fmt.Sprint(i)})
	}
	q.Add(Event{Kind: Resync, Source: "listen"})
	q.Add(Event{Kind: PeerChanged, ID: "late"}) // covered by the pending resync
	if q.Len() != 1 {
		t.Fatalf("Len %d, want 1 (the resync)", q.Len())
	}
	b := get(t, q)
	if len(b) != 1 || b[0].Kind != Resync {
		t.Fatalf("batch %v, want one resync", ids(b))
	}
	// While the resync runs, a change is kept: the resync may have read
	// the row before it changed.
	q.Add(Event{Kind: PeerChanged, ID: "during"})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if b2, ok := q.Get(ctx); ok {
		t.Fatalf("got %v while the resync is processing", ids(b2))
	}
	cancel()
	q.Done(b)
	if b = get(t, q); fmt.Sprint(ids(b)) != "[peer_changed:during]" {
		t.Fatalf("after resync: %v", ids(b))
	}
}

func TestQueueResyncWaitsForInflight(t *testing.T) {
	q := NewQueue(QueueOptions{})
	q.Add(Event{Kind: PeerChanged, ID: "a"})
	b := get(t, q)
	q.Add(Event{Kind: Resync})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if b2, ok := q.Get(ctx); ok {
		t.Fatalf("resync handed out while a key is in flight: %v", ids(b2))
	}
	q.Done(b)
	if b = get(t, q); b[0].Kind != Resync {
		t.Fatalf("got %v, want resync", ids(b))
	}
}

func TestQueueDirtyWhileProcessing(t *testing.T) {
	q := NewQueue(QueueOptions{})
	q.Add(Event{Kind: PeerChanged, ID: "a", Source: "1"})
	b := get(t, q)
	q.Add(Event{Kind: PeerChanged, ID: "a", Source: "2"})
	q.Add(Event{Kind: PeerChanged, ID: "a", Source: "3"})
	q.Add(Event{Kind: PeerChanged, ID: "b"})
	// b is ready, a is not: never concurrently with itself.
	b2 := get(t, q)
	if fmt.Sprint(ids(b2)) != "[peer_changed:b]" {
		t.Fatalf("second batch %v, want only b", ids(b2))
	}
	q.Done(b)
	b3 := get(t, q)
	if len(b3) != 1 || b3[0].ID != "a" || b3[0].Source != "3" {
		t.Fatalf("after Done: %+v, want a once more with the latest event", b3)
	}
	q.Done(b2)
	q.Done(b3)
	if q.Len() != 0 {
		t.Fatalf("Len %d", q.Len())
	}
}

func TestQueueBurstBatches(t *testing.T) {
	q := NewQueue(QueueOptions{MaxBatch: 4096})
	for i := range 10_000 {
		q.Add(Event{Kind: PeerChanged, ID: fmt.Sprint(i % 10_000)})
	}
	for i := range 10_000 {
		q.Add(Event{Kind: PeerChanged, ID: fmt.Sprint(i)})
	}
	seen := map[string]bool{}
	batches := 0
	for len(seen) < 10_000 {
		b := get(t, q)
		batches++
		for _, e := range b {
			if seen[e.ID] {
				t.Fatalf("%s handed out twice", e.ID)
			}
			seen[e.ID] = true
		}
		q.Done(b)
	}
	if batches != 3 {
		t.Errorf("%d batches, want 3", batches)
	}
}

func TestQueueBoundedCollapsesToResync(t *testing.T) {
	q := NewQueue(QueueOptions{MaxPending: 10})
	for i := range 1000 {
		q.Add(Event{Kind: PeerChanged, ID: fmt.Sprint(i)})
	}
	if n := q.Len(); n > 11 {
		t.Fatalf("Len %d: memory not bounded", n)
	}
	var sawResync bool
	for q.Len() > 0 {
		b := get(t, q)
		for _, e := range b {
			sawResync = sawResync || e.Kind == Resync
		}
		q.Done(b)
	}
	if !sawResync {
		t.Fatal("overflow did not turn into a resync")
	}
}

func TestQueueCloseAndCancel(t *testing.T) {
	q := NewQueue(QueueOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool)
	go func() { _, ok := q.Get(ctx); done <- ok }()
	cancel()
	if <-done {
		t.Fatal("Get returned ok after cancel")
	}
	go func() { _, ok := q.Get(context.Background()); done <- ok }()
	q.Close()
	if <-done {
		t.Fatal("Get returned ok after Close")
	}
	q.Add(Event{Kind: Resync}) // no panic, dropped
	q.Done(nil)
}

// Many producers, two consumers: every key's last event is processed after
// its last Add, and no key is ever processed by two consumers at once.
func TestQueueConcurrent(t *testing.T) {
	q := NewQueue(QueueOptions{MaxBatch: 64})
	const keys, producers, perProducer = 52, 4, 5000 // keys a multiple of producers
	var inflight [keys]atomic.Int32
	var lastSeen [keys]atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var cons sync.WaitGroup
	var violations atomic.Int32
	for range 2 {
		cons.Add(1)
		go func() {
			defer cons.Done()
			for {
				b, ok := q.Get(ctx)
				if !ok {
					return
				}
				for _, e := range b {
					if e.Kind == Resync {
						continue
					}
					var k int
					var seq int64
					fmt.Sscanf(e.ID, "%d", &k)
					fmt.Sscanf(e.Source, "%d", &seq)
					if inflight[k].Add(1) != 1 {
						violations.Add(1)
					}
					if seq > lastSeen[k].Load() {
						lastSeen[k].Store(seq)
					}
				}
				for _, e := range b {
					if e.Kind != Resync {
						var k int
						fmt.Sscanf(e.ID, "%d", &k)
						inflight[k].Add(-1)
					}
				}
				q.Done(b)
			}
		}()
	}
	var prod sync.WaitGroup
	var final [keys]atomic.Int64
	for p := range producers {
		prod.Add(1)
		go func() {
			defer prod.Done()
			// Each producer owns the keys k%producers == p, so per key the
			// order of Adds is the order of sequence numbers.
			for i := range perProducer {
				k := (i*producers + p) % keys
				s := int64(i + 1)
				final[k].Store(s)
				q.Add(Event{Kind: PeerChanged, ID: fmt.Sprint(k), Source: fmt.Sprint(s)})
			}
		}()
	}
	prod.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for k := range keys {
		for lastSeen[k].Load() < final[k].Load() {
			if time.Now().After(deadline) {
				t.Fatalf("key %d: last processed %d, last added %d", k, lastSeen[k].Load(), final[k].Load())
			}
			time.Sleep(time.Millisecond) // polling a condition with a deadline
		}
	}
	cancel()
	cons.Wait()
	if v := violations.Load(); v != 0 {
		t.Fatalf("%d times a key was processed concurrently with itself", v)
	}
}
