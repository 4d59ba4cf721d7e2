// Package trim returns a Go process's free heap memory to the operating
// system after bursts of work.
//
// The runtime keeps the pages a burst freed up to its heap goal, and the
// goal is set by whatever was live when a collection ran: a collection
// during a resync of 10,000 peers counts the snapshot, the device read and
// the diff as live, so the goal, and the pages kept resident until the
// scavenger slowly hands them back, stay that much above what the process
// holds between bursts. A burst is a handful of operations a minute, so
// collecting once after it and returning everything free costs little
// and keeps the process near its live data for the rest of the minute.
package trim

import (
	"context"
	"runtime/debug"
	"time"

	"github.com/waylume/waylume-node/internal/retry"
)

// Trimmer collects and returns free memory (debug.FreeOSMemory) quiet
// after the last of a burst of Pokes, or every after a burst's first poke
// while pokes keep coming, and never twice within spacing: each trim is a
// full collection, whose CPU grows with the heap.
type Trimmer struct {
	quiet, every, spacing time.Duration

	poke chan struct{}
	free func() // debug.FreeOSMemory; tests count calls instead
}

// New returns a Trimmer with the given timings; Run starts it.
func New(quiet, every, spacing time.Duration) *Trimmer {
	return &Trimmer{quiet: quiet, every: every, spacing: spacing,
		poke: make(chan struct{}, 1), free: debug.FreeOSMemory}
}

// Poke says a burst of work made garbage. It never blocks.
func (t *Trimmer) Poke() {
	select {
	case t.poke <- struct{}{}:
	default:
	}
}

// Run trims after pokes until ctx ends.
func (t *Trimmer) Run(ctx context.Context) {
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.poke:
		}
		if !t.waitBurst(ctx) {
			return
		}
		if wait := t.spacing - time.Since(last); wait > 0 && !retry.Sleep(ctx, wait) {
			return
		}
		// A poke made while waiting out the spacing is garbage this trim
		// returns: it must not start another burst.
		select {
		case <-t.poke:
		default:
		}
		t.free()
		last = time.Now()
	}
}

// waitBurst waits until pokes pause for quiet, or every has passed.
func (t *Trimmer) waitBurst(ctx context.Context) bool {
	deadline := time.NewTimer(t.every)
	defer deadline.Stop()
	quiet := time.NewTimer(t.quiet)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.poke:
			quiet.Reset(t.quiet)
		case <-quiet.C:
			return true
		case <-deadline.C:
			return true
		}
	}
}
