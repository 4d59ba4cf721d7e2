package reconcile

// Events are hints: a batch updates the known rows (from the row an event
// carries, a single-row read, or a snapshot when that is cheaper or a read
// failed) and then runs the same converge as every other path.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/waylume/waylume-node/events"
)

// maxFetchesPerBatch: a batch needing more single-row reads than this
// (LISTEN events carry no rows) is served by one snapshot instead.
const maxFetchesPerBatch = 64

// Handle applies one batch of events; Resync events reread everything.
func (r *Reconciler) Handle(ctx context.Context, batch []events.Event) (err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.contain("handle events", &err)
	start := r.now()
	// Rows to fetch one by one are fetched under the lock: past a handful,
	// one snapshot is cheaper and bounds the time the lock is held.
	resync := !r.synced || fetches(batch) > maxFetchesPerBatch
	resync, errs := r.takeEvents(ctx, batch, resync)
	if resync {
		r.lastEventResync = start
		r.m.eventResyncs.Inc()
		err = r.resyncLocked(ctx)
	} else {
		err = r.convergeLocked(ctx, false, false)
	}
	if err == nil {
		r.m.applied.Add(float64(len(batch)))
		for _, e := range batch {
			if !e.Commit.IsZero() {
				r.m.latency.Observe(r.now().Sub(e.Commit).Seconds())
			}
		}
	}
	r.log.Debug("events applied", "events", len(batch), "resync", resync, "took", r.now().Sub(start))
	return errors.Join(append(errs, err)...)
}

// eventResyncWait is how long the event loop holds batch back before
// handling it, so that the snapshots events ask for run at most once per
// EventResyncInterval. Anyone may NOTIFY on a node's channel: a flood of
// well-formed hints must not become back-to-back snapshots of every row.
// While the batch waits the queue coalesces what arrives, so a flood costs
// one snapshot per interval. The first snapshot never waits, nor does one
// after a quiet interval (a bulk insert is applied at once).
func (r *Reconciler) eventResyncWait(batch []events.Event) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.synced || r.lastEventResync.IsZero() {
		return 0
	}
	asks := fetches(batch) > maxFetchesPerBatch
	for _, e := range batch {
		asks = asks || e.Kind == events.Resync
	}
	if !asks {
		return 0
	}
	return r.cfg.EventResyncInterval - r.now().Sub(r.lastEventResync)
}

// fetches counts the events that carry no row: each needs a read.
func fetches(batch []events.Event) int {
	n := 0
	for _, e := range batch {
		if (e.Kind == events.PeerChanged && e.Peer == nil) || (e.Kind == events.NodeChanged && e.Node == nil) {
			n++
		}
	}
	return n
}

// takeEvents updates the known rows from a batch. With resync (already
// due, or set by a failed read) rows to read are left to the snapshot.
func (r *Reconciler) takeEvents(ctx context.Context, batch []events.Event, resync bool) (bool, []error) {
	var errs []error
	for _, e := range batch {
		var err error
		switch e.Kind {
		case events.Resync:
			resync = true
		case events.PeerDeleted:
			r.dropRow(e.ID)
		case events.PeerChanged:
			err = r.peerChanged(ctx, e, resync)
		case events.NodeChanged:
			err = r.nodeChanged(ctx, e, resync)
		}
		if err != nil {
			// Keep what is applied; the resync rereads it.
			errs = append(errs, err)
			resync = true
		}
	}
	return resync, errs
}

func (r *Reconciler) peerChanged(ctx context.Context, e events.Event, resync bool) error {
	if e.Peer != nil {
		r.setRow(*e.Peer, true)
		return nil
	}
	if resync { // the snapshot rereads it
		return nil
	}
	sctx, cancel := r.storeCtx(ctx)
	p, err := r.cfg.Store.Peer(sctx, r.cfg.NodeID, e.ID)
	cancel()
	switch {
	case err == nil:
		r.setRow(p, false)
	case errors.Is(err, events.ErrNotFound):
		r.dropRow(e.ID)
	default:
		return fmt.Errorf("fetch peer %s: %w", e.ID, err)
	}
	return nil
}

func (r *Reconciler) nodeChanged(ctx context.Context, e events.Event, resync bool) error {
	if e.Node != nil {
		r.node, r.decideAll = *e.Node, true
		return nil
	}
	if resync {
		return nil
	}
	sctx, cancel := r.storeCtx(ctx)
	n, err := r.cfg.Store.Node(sctx, r.cfg.NodeID)
	cancel()
	if err != nil {
		return fmt.Errorf("fetch node: %w", err)
	}
	r.node, r.decideAll = n, true
	return nil
}
