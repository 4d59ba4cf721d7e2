package reconcile

import (
	"context"
	"fmt"

	"github.com/waylume/waylume-node/events"
)

// heartbeat writes the node's liveness and counts to its row. It reads the
// counters first so that handshakes are fresh.
func (r *Reconciler) heartbeat(ctx context.Context, status string) error {
	hb := events.Heartbeat{PublicKey: r.cfg.PublicKey, Status: status, Version: r.cfg.Version}
	r.mu.Lock()
	if st, err := r.stats(ctx); err == nil {
		// held maps every key on the device to the one peer holding it.
		for _, s := range st {
			if ps := r.held[s.PublicKey]; ps != nil && ps.inPlane {
				ps.observe(s)
			}
		}
	}
	now := r.now()
	for _, ps := range r.peers {
		if !ps.inPlane || ps.leaving {
			continue
		}
		hb.Peers++
		if !ps.handshake.IsZero() && now.Sub(ps.handshake) < activeWindow {
			hb.ActiveSessions++
		}
	}
	r.updatePeerMetrics()
	r.mu.Unlock()
	sctx, cancel := r.storeCtx(ctx)
	defer cancel()
	if err := r.cfg.Store.Heartbeat(sctx, r.cfg.NodeID, hb); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	r.mu.Lock()
	r.contact = r.now()
	r.mu.Unlock()
	return nil
}

// Heartbeat writes the node's row now (status "online", "offline", ...).
func (r *Reconciler) Heartbeat(ctx context.Context, status string) error {
	return r.heartbeat(ctx, status)
}
