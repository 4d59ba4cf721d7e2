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
	if st, err := r.cfg.DataPlane.Stats(ctx); err == nil {
		byKey := make(map[Key]PeerStats, len(st))
		for _, s := range st {
			byKey[s.PublicKey] = s
		}
		for _, ps := range r.peers {
			if s, ok := byKey[ps.key]; ok && ps.inPlane {
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
