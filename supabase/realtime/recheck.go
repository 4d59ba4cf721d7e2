package realtime

import (
	"sync"
	"time"

	"github.com/waylume/waylume-node/events"
)

// recheckDelay is how long after a hint it is delivered again.
const recheckDelay = 250 * time.Millisecond

// recheck delivers every row-less hint twice: at once and recheckDelay
// later. The server decodes a change from the WAL as soon as its commit
// record is flushed, which is a moment before the commit is visible to
// other sessions (and longer behind a synchronous standby): a reread at
// once can find the row as it was, or no row for an insert, and the change
// would wait for the next full resync. A hint is idempotent, so the second
// delivery costs at most one more single-row read; hints arriving within
// one delay are delivered again together.
type recheck struct {
	sink  events.Sink
	delay time.Duration

	mu      sync.Mutex
	pending map[recheckKey]events.Event
	timer   *time.Timer
	stopped bool
}

type recheckKey struct {
	kind events.Kind
	id   string
}

func newRecheck(sink events.Sink, delay time.Duration) *recheck {
	return &recheck{sink: sink, delay: delay}
}

// add delivers e now and, when it carries no row, once more later.
func (r *recheck) add(e events.Event) {
	r.sink.Add(e)
	if e.Peer != nil || e.Node != nil || (e.Kind != events.PeerChanged && e.Kind != events.NodeChanged) {
		return
	}
	e.Commit = time.Time{} // the latency metric counts the first delivery only
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	if r.pending == nil {
		r.pending = map[recheckKey]events.Event{}
	}
	r.pending[recheckKey{e.Kind, e.ID}] = e
	if r.timer == nil {
		r.timer = time.AfterFunc(r.delay, r.fire)
	}
}

func (r *recheck) fire() {
	r.mu.Lock()
	due := r.pending
	r.pending, r.timer = nil, nil
	stopped := r.stopped
	r.mu.Unlock()
	if stopped {
		return
	}
	for _, e := range due {
		r.sink.Add(e)
	}
}

// stop drops what is pending; nothing is delivered after it returns
// except a fire already under way.
func (r *recheck) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	if r.timer != nil {
		r.timer.Stop()
	}
	r.pending, r.timer = nil, nil
}
