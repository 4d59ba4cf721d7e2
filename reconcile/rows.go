package reconcile

// The desired rows and their claim index. Rows conflict only when they
// claim the same public key or address (or overlapping extra allowed IPs),
// so the index of who claims what lets an event decide only the rows it
// may affect instead of all 10,000.

import (
	"net/netip"
	"slices"

	"github.com/waylume/waylume-node/events"
)

// setRow takes a row unless it is no longer this node's or, for a row
// an event carried (hint), older than the one known: a late event after a
// newer snapshot. A row read from the store is the truth.
func (r *Reconciler) setRow(p events.Peer, hint bool) {
	if p.NodeID != r.cfg.NodeID {
		r.dropRow(p.ID)
		return
	}
	if old, ok := r.rows[p.ID]; ok && hint && p.UpdatedAt.Before(old.UpdatedAt) {
		return
	}
	r.dropRow(p.ID)
	r.putRow(p)
}

func samePeer(a, b events.Peer) bool {
	return a.ID == b.ID && a.NodeID == b.NodeID && a.PublicKey == b.PublicKey && a.PresharedKey == b.PresharedKey &&
		a.Address == b.Address && a.Address6 == b.Address6 && slices.Equal(a.AllowedIPs, b.AllowedIPs) &&
		a.PersistentKeepalive == b.PersistentKeepalive && a.DownloadKbps == b.DownloadKbps && a.UploadKbps == b.UploadKbps &&
		a.QuotaBytes == b.QuotaBytes && a.QuotaResetAt.Equal(b.QuotaResetAt) && a.ExpiresAt.Equal(b.ExpiresAt) &&
		a.Enabled == b.Enabled && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

// putRow and dropRow keep rows, the claim index and the dirty set together.
func (r *Reconciler) putRow(p events.Peer) {
	if p.NodeID == r.cfg.NodeID {
		p.NodeID = r.cfg.NodeID // one copy, not one per row
	}
	r.rows[p.ID] = p
	r.dirty[p.ID] = true
	index(r.byKey, p.PublicKey, p.ID, true)
	for _, a := range []netip.Prefix{p.Address, p.Address6} {
		if a.IsValid() {
			index(r.byAddr, a.Addr(), p.ID, true)
		}
	}
}

func (r *Reconciler) dropRow(id string) {
	r.dirty[id] = true
	p, ok := r.rows[id]
	if !ok {
		return
	}
	delete(r.rows, id)
	if len(p.AllowedIPs) > 0 {
		r.decideAll = true // overlaps are not indexed
	}
	// Rows sharing a claim with the old version may gain what it let go.
	for _, other := range r.byKey[p.PublicKey] {
		r.dirty[other] = true
	}
	index(r.byKey, p.PublicKey, id, false)
	for _, a := range []netip.Prefix{p.Address, p.Address6} {
		if a.IsValid() {
			for _, other := range r.byAddr[a.Addr()] {
				r.dirty[other] = true
			}
			index(r.byAddr, a.Addr(), id, false)
		}
	}
}

func index[K comparable](m map[K][]string, k K, id string, add bool) {
	ids := m[k]
	i := slices.Index(ids, id)
	switch {
	case add && i < 0:
		m[k] = append(ids, id)
	case !add && i >= 0:
		if len(ids) == 1 {
			delete(m, k)
		} else {
			m[k] = slices.Delete(slices.Clone(ids), i, i+1)
		}
	}
}

// closure is the set of rows whose decision may change when the rows in
// changed did: rows are only ever in conflict when they claim the same
// key or address (or overlapping extra allowed IPs: ok is false then and
// the caller decides everything), so the connected component of the
// changed rows in the claim graph is decided the same alone as with all.
func (r *Reconciler) closure(changed map[string]bool) (ids map[string]bool, ok bool) {
	ids = map[string]bool{}
	queue := make([]string, 0, len(changed))
	for id := range changed {
		ids[id] = true
		queue = append(queue, id)
	}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		p, present := r.rows[id]
		if !present {
			continue
		}
		if len(p.AllowedIPs) > 0 {
			return nil, false
		}
		var linked [][]string
		linked = append(linked, r.byKey[p.PublicKey])
		for _, a := range []netip.Prefix{p.Address, p.Address6} {
			if a.IsValid() {
				linked = append(linked, r.byAddr[a.Addr()])
			}
		}
		for _, set := range linked {
			for _, other := range set {
				if !ids[other] {
					ids[other] = true
					queue = append(queue, other)
				}
			}
		}
	}
	return ids, true
}
