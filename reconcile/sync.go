package reconcile

// Reading the whole of the node's state: the status rows once at start
// (Load), then the node and all its peers at every resync, and, once, the
// peers the data plane already holds (adopt).

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"
)

// Load reads the status rows (counter baselines, totals) once, before the
// first resync; until it succeeds nothing is applied.
func (r *Reconciler) Load(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loadLocked(ctx)
}

func (r *Reconciler) loadLocked(ctx context.Context) error {
	if r.loaded {
		return nil
	}
	sctx, cancel := r.storeCtx(ctx)
	defer cancel()
	st, err := r.cfg.Store.PeerStatuses(sctx, r.cfg.NodeID)
	if err != nil {
		return fmt.Errorf("load peer status: %w", err)
	}
	quota, err := r.cfg.Store.QuotaUsage(sctx, r.cfg.NodeID)
	if err != nil {
		return fmt.Errorf("load quota usage: %w", err)
	}
	r.forgetSaved()
	// Rows repeat the same few strings (node id, epoch, state, reason):
	// one copy each instead of one per peer.
	in := interner{r.cfg.NodeID: r.cfg.NodeID}
	for _, s := range st {
		ps := r.peer(s.PeerID)
		s.NodeID, s.CounterEpoch, s.State, s.Reason = in.get(s.NodeID), in.get(s.CounterEpoch), in.get(s.State), in.get(s.Reason)
		ps.com = s
		ps.state, ps.reason, ps.appliedAt = s.State, s.Reason, s.AppliedAt
		ps.handshake, ps.endpoint = s.LastHandshakeAt, s.Endpoint
	}
	for id, used := range quota {
		ps := r.peer(id)
		ps.quotaBase, ps.quotaKnown = used, true
	}
	if quota != nil {
		for _, ps := range r.peers {
			ps.quotaKnown = true // absent from the map: nothing used since the reset
		}
	}
	r.epoch = r.cfg.DataPlane.Epoch()
	// The first usage period of this process starts now; bytes since the
	// previous process's last flush are in it too (period_start is
	// informative, period_end is the key).
	r.lastFlush = r.now().Truncate(time.Microsecond)
	r.loaded = true
	return nil
}

// interner keeps one copy of strings that repeat across peers.
type interner map[string]string

func (in interner) get(s string) string {
	if v, ok := in[s]; ok {
		return v
	}
	in[s] = s
	return s
}

// Resync rereads the node and all its peers and converges fully. A read
// failure changes nothing.
func (r *Reconciler) Resync(ctx context.Context) (err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.contain("resync", &err)
	return r.resyncLocked(ctx)
}

func (r *Reconciler) resyncLocked(ctx context.Context) error {
	// Serving a saved state, Load waits for the snapshot: both answered,
	// the saved state is replaced at once (local.go).
	if !r.local {
		if err := r.loadLocked(ctx); err != nil {
			return err
		}
	}
	sctx, cancel := r.storeCtx(ctx)
	node, peers, err := r.cfg.Store.Snapshot(sctx, r.cfg.NodeID)
	cancel()
	if err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	if r.local {
		if err := r.loadLocked(ctx); err != nil {
			return err
		}
	}
	r.contact = r.now()
	r.node = node
	// Only what differs from the known rows touches the index: a
	// no-change resync of 10,000 peers rewrites nothing.
	seen := make(map[string]bool, len(peers))
	for _, p := range peers {
		if p.NodeID != r.cfg.NodeID {
			continue
		}
		seen[p.ID] = true
		if old, ok := r.rows[p.ID]; ok && samePeer(old, p) {
			continue
		}
		r.dropRow(p.ID)
		r.putRow(p)
	}
	for id := range r.rows {
		if !seen[id] {
			r.dropRow(id)
		}
	}
	freed := r.endLocal()
	if !r.adopted {
		freed = nil // adopt everything
	}
	if !r.adopted || len(freed) > 0 {
		if err := r.adoptLocked(ctx, freed); err != nil {
			return err
		}
	}
	r.synced = true
	return r.convergeLocked(ctx, true, true)
}

// adoptLocked matches the peers the data plane already holds (after a
// restart) to rows by public key, so that unchanged peers are kept as they
// are and leaving ones get their final usage flushed. Keys no row claims
// are left to the full sync to remove: a row deleted while the node was
// down maps no key to a peer id any more, so their last bytes cannot be
// attributed to anyone. A key adopted by a row without a status row takes
// its current counters as baseline. With only, just those keys are
// adopted: keys the saved state held under rows the database no longer has
// (endLocal), which a row re-created with the same key claims as it would
// at a start.
func (r *Reconciler) adoptLocked(ctx context.Context, only map[Key]bool) error {
	st, err := r.stats(ctx)
	if err != nil {
		return fmt.Errorf("adopt: read data plane: %w", err)
	}
	r.epoch = r.cfg.DataPlane.Epoch()
	inKernel := make(map[Key]PeerStats, len(st))
	for _, s := range st {
		inKernel[s.PublicKey] = s
	}
	dec := decide(r.node, r.self, r.rows, r.now(), r.quotaUsed)
	ids := make([]string, 0, len(dec))
	for id := range dec {
		ids = append(ids, id)
	}
	// Owners first, then by age: the row that owns a key adopts it.
	slices.SortFunc(ids, func(a, b string) int {
		da, db := dec[a], dec[b]
		if da.owner != db.owner {
			if da.owner {
				return -1
			}
			return 1
		}
		if c := r.rows[a].CreatedAt.Compare(r.rows[b].CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	taken := map[Key]bool{}
	for _, id := range ids {
		d := dec[id]
		s, ok := inKernel[d.key]
		if !d.keyOK || !ok || taken[d.key] || (only != nil && !only[d.key]) {
			continue
		}
		taken[d.key] = true
		ps := r.peer(id)
		r.setPlane(ps, true, d.key)
		ps.observe(s)
		if ps.com.PeerID == "" {
			// No status row: nothing says which of these counters were
			// billed. A row deleted and re-created with the same key while
			// the node was down finds the old peer's counters, already
			// billed under the old id: count from here on.
			ps.com.RxBaseline, ps.com.TxBaseline, ps.com.CounterEpoch = s.RxBytes, s.TxBytes, r.epoch
		}
	}
	if only == nil {
		r.adopted = true
	}
	return nil
}

func (ps *peerState) observe(s PeerStats) {
	ps.rx, ps.tx, ps.read = s.RxBytes, s.TxBytes, true
	if !s.LastHandshake.IsZero() {
		ps.handshake = s.LastHandshake.Truncate(time.Microsecond) // as the database keeps it
	}
	if s.Endpoint.IsValid() {
		// Formatted on the stack and compared first: a string per peer
		// per read would be garbage at every flush.
		var buf [64]byte
		if b := s.Endpoint.AppendTo(buf[:0]); string(b) != ps.endpoint {
			ps.endpoint = string(b)
		}
	}
}
