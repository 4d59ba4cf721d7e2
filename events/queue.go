package events

import (
	"context"
	"sync"
)

// Queue coalesces events between the sources and the reconciler, the way
// client-go's workqueue does for keys:
//
//   - an event is keyed by what it is about (a peer id, the node, or resync);
//     a key is present at most once, the latest event for it wins;
//   - a Resync supersedes everything pending: the consumer rereads all state;
//   - a key is never handed out while it is being processed; if it changes
//     meanwhile it is handed out once more after Done;
//   - Add never blocks; memory is bounded by MaxPending keys whatever the
//     rate: past it the pending keys collapse into one Resync;
//   - the consumer takes batches, so a burst of 10,000 changes reaches the
//     kernel in a few round trips.
//
// Queue is safe for many producers and one or more consumers.
type Queue struct {
	maxBatch   int
	maxPending int
	onCoalesce func(n int)

	mu         sync.Mutex
	wake       chan struct{} // capacity 1: "something may be ready"
	pending    map[queueKey]Event
	order      []queueKey // FIFO of pending keys; may hold keys no longer pending
	processing map[queueKey]bool
	dirty      map[queueKey]Event // changed while processing: requeued on Done
	resync     *Event             // a pending Resync
	closed     bool
}

type queueKey struct {
	kind Kind // PeerChanged and PeerDeleted share one key: the peer
	id   string
}

func keyOf(e Event) queueKey {
	switch e.Kind {
	case PeerChanged, PeerDeleted:
		return queueKey{PeerChanged, e.ID}
	case NodeChanged:
		return queueKey{NodeChanged, ""}
	}
	return queueKey{Resync, ""}
}

// QueueOptions tune a Queue; zero values pick the defaults.
type QueueOptions struct {
	MaxBatch   int         // events per Get; default 1024
	MaxPending int         // distinct keys kept before collapsing to Resync; default 100,000
	OnCoalesce func(n int) // called (under the queue's lock) when n events were merged away
}

// shrinkAbove is the size past which the queue's maps and slice are
// replaced instead of reused once drained.
const shrinkAbove = 1024

// NewQueue returns an empty queue.
func NewQueue(o QueueOptions) *Queue {
	if o.MaxBatch <= 0 {
		o.MaxBatch = 1024
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 100_000
	}
	if o.OnCoalesce == nil {
		o.OnCoalesce = func(int) {}
	}
	return &Queue{
		maxBatch: o.MaxBatch, maxPending: o.MaxPending, onCoalesce: o.OnCoalesce,
		wake:    make(chan struct{}, 1),
		pending: map[queueKey]Event{}, processing: map[queueKey]bool{}, dirty: map[queueKey]Event{},
	}
}

var _ Sink = (*Queue)(nil)

// Add queues e. It never blocks.
func (q *Queue) Add(e Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	k := keyOf(e)
	if k.kind == Resync {
		q.setResync(e)
	} else if q.processing[k] {
		if _, ok := q.dirty[k]; ok {
			q.onCoalesce(1)
		}
		q.dirty[k] = e
	} else if q.resync != nil {
		q.onCoalesce(1) // the pending resync rereads this row anyway
	} else {
		if _, ok := q.pending[k]; ok {
			q.onCoalesce(1)
		} else {
			q.order = append(q.order, k)
		}
		q.pending[k] = e
		if len(q.pending)+len(q.dirty) > q.maxPending {
			q.setResync(Event{Kind: Resync, Source: e.Source})
		}
	}
	q.signal()
}

// setResync drops everything pending in favour of one Resync. Keys being
// processed stay marked, and their dirty events are dropped too: the
// resync runs after them and reads their latest state.
func (q *Queue) setResync(e Event) {
	n := len(q.pending) + len(q.dirty)
	if q.resync != nil {
		n++
	}
	if n > 0 {
		q.onCoalesce(n)
	}
	clear(q.pending)
	clear(q.dirty)
	q.order = q.order[:0]
	q.resync = &e
}

func (q *Queue) signal() {
	if q.closed {
		return
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Get waits for a batch: either one Resync alone, or up to MaxBatch events
// with distinct keys, oldest first. The caller must call Done(batch) after
// processing it. ok is false when ctx ended or the queue was closed.
func (q *Queue) Get(ctx context.Context) (batch []Event, ok bool) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil, false
		}
		batch = q.take()
		q.mu.Unlock()
		if len(batch) > 0 {
			return batch, true
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-q.wake:
		}
	}
}

// take hands out what is ready; the caller holds q.mu.
func (q *Queue) take() []Event {
	if q.resync != nil {
		// A resync reads everything, so it waits until no key is in flight.
		if len(q.processing) > 0 {
			return nil
		}
		e := *q.resync
		q.resync = nil
		q.processing[queueKey{Resync, ""}] = true
		return []Event{e}
	}
	if q.processing[queueKey{Resync, ""}] {
		return nil
	}
	var batch []Event
	i := 0
	for ; i < len(q.order) && len(batch) < q.maxBatch; i++ {
		k := q.order[i]
		e, ok := q.pending[k]
		if !ok {
			continue
		}
		delete(q.pending, k)
		q.processing[k] = true
		batch = append(batch, e)
	}
	q.order = append(q.order[:0], q.order[i:]...)
	if len(q.pending) == 0 && cap(q.order) > shrinkAbove {
		// A burst is over. Maps never shrink: drop the ones it grew so
		// they do not stay resident between bursts.
		q.pending, q.order = map[queueKey]Event{}, nil
	}
	if len(q.pending) > 0 {
		q.signal() // more for another Get
	}
	return batch
}

// Done marks a batch from Get processed; keys that changed meanwhile are
// queued again.
func (q *Queue) Done(batch []Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(batch) > shrinkAbove && len(q.processing) == len(batch) {
		q.processing = map[queueKey]bool{} // the same, for a large batch's keys
	}
	for _, e := range batch {
		k := keyOf(e)
		delete(q.processing, k)
		if d, ok := q.dirty[k]; ok {
			delete(q.dirty, k)
			if q.resync == nil {
				if _, dup := q.pending[k]; !dup {
					q.order = append(q.order, k)
				}
				q.pending[k] = d
			}
		}
	}
	q.signal()
}

// Len is the number of keys waiting (a pending Resync counts as one).
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.pending) + len(q.dirty)
	if q.resync != nil {
		n++
	}
	return n
}

// Close wakes any Get, which then returns ok=false; later Adds are dropped.
func (q *Queue) Close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.wake)
	}
}
