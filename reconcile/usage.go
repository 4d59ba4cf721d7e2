package reconcile

// Usage accounting, exactly once.
//
// The kernel's per-peer counters (rx, tx: monotonic since the WireGuard
// peer was added to this device) are the buffer; the database holds, per
// peer, in one peer_status row: the lifetime totals and the raw counter
// values already accounted for (baselines) with the device epoch they were
// read on. A flush:
//
//  1. reads all counters (Stats) and the epoch;
//  2. per peer: delta = counter - baseline, or the whole counter when the
//     epoch differs or a counter is below its baseline (it restarted from
//     zero: peer re-added, interface recreated, host rebooted);
//  3. writes in ONE transaction the usage deltas (added to the peers'
//     bucket rows by the database, which applies a flush at most once:
//     keyed by its period_end against the node's flush mark) and the
//     status rows with totals+delta and baselines=counters (absolute
//     values);
//  4. only after the commit moves the in-memory baselines (ps.com).
//
// Crash or error at each point:
//   - before 3 commits: the database keeps the old baselines, the kernel
//     keeps counting; the next flush (this process or, after a restart, one
//     that reloads baselines with PeerStatuses) sends the larger delta.
//     Nothing lost, nothing counted twice.
//   - after 3 commits, before 4: the database has the new baselines; a
//     restart reloads them. In a running process an error on 3 may hide a
//     commit that happened (connection lost during COMMIT): the batch is
//     kept as r.inflight and retried unchanged before anything else is
//     computed. The database finds its period_end equal to the flush mark
//     and adds nothing; its status rows rewrite the same absolute values:
//     a no-op. No newer batch is built from stale baselines in between, so
//     no byte is added twice under two period_ends.
//   - database down for any time: every flush retries the same inflight
//     batch; the kernel counters keep the bytes since; the first flush after
//     the outage commits the old batch and then one delta for the rest.
//
// Removing a peer (deleted, disabled, expired, over quota, moved, invalid,
// key changed) must not lose its last bytes, and a later re-add starts its
// counters at zero. So:
//
//  a. the peer is cut first (no allowed IPs: nothing is routed to it and
//     what it sends is dropped; its counters then move only by handshakes,
//     keepalives and packets it still sends, which are counted before
//     WireGuard drops them) and marked leaving; a flush is requested;
//  b. that flush reads its counters and commits them with everyone else's;
//  c. only then is it removed from WireGuard (removeLeaving).
//  d. Its baselines in the database now describe counters that no longer
//     exist. A peer is never added back to the device while its committed
//     baselines are non-zero in the current epoch (needsZero): the next
//     flush writes them as zero first.
//
// Crashes: between a and b the peer is still in the device, cut; after a
// restart adoption finds it, it is cut again and b proceeds. Between b and
// c: the final bytes are committed with baselines equal to the counters;
// after a restart the peer is still in the device, delta zero, removal
// proceeds. Between c and d: the peer is gone from the device with non-zero
// committed baselines; needsZero holds it back until zero is written, so
// its fresh counters are never measured against the old baseline.
//
// What cannot be counted: the bytes counted between the last read (b) and
// removal (c), milliseconds during which the peer is already cut; bytes of
// a peer whose row was deleted while the node was down (no row maps its key
// to a peer id when the node adopts the device); the counters of a key
// adopted by a row without a status row (taken as its baseline, since a row
// re-created with the same key finds counters billed under the old id);
// bytes after the last flush when the device itself is destroyed (counters
// gone with it; a clean shutdown flushes first).
//
// Not every peer is written at every flush (account): an idle peer's bytes
// wait in the counters, which are the buffer anyway.
//
// Quota is checked against the bytes since quota_reset_at as of the last
// commit plus the unflushed delta of the last read (quotaUsed).

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/waylume/waylume-node/events"
)

type batch struct {
	end     time.Time
	usage   []events.Usage
	status  []events.PeerStatus
	entries []entry      // one per peer whose committed state moves
	leaving []*peerState // read after they were cut: removed after commit
}

type entry struct {
	ps    *peerState
	com   events.PeerStatus // the peer's committed state after this batch
	gen   uint64
	delta int64
}

// delta is what the counters add to the committed baselines.
func delta(com events.PeerStatus, epoch string, rx, tx int64) (drx, dtx int64) {
	if com.CounterEpoch != epoch || rx < com.RxBaseline || tx < com.TxBaseline {
		return rx, tx // restarted from zero
	}
	return rx - com.RxBaseline, tx - com.TxBaseline
}

// unflushed is what the last read adds to the committed totals.
func (r *Reconciler) unflushed(ps *peerState) (drx, dtx int64) {
	if !ps.inPlane || !ps.read {
		return 0, 0
	}
	return delta(ps.com, r.epoch, ps.rx, ps.tx)
}

// needsZero: the database holds baselines of counters this device no
// longer has for this peer; adding it back must wait until zero is written.
func (r *Reconciler) needsZero(ps *peerState) bool {
	return !ps.inPlane && ps.com.CounterEpoch == r.epoch && (ps.com.RxBaseline != 0 || ps.com.TxBaseline != 0)
}

func (r *Reconciler) quotaUsed(id string) int64 {
	ps := r.peers[id]
	if ps == nil {
		return 0
	}
	drx, dtx := r.unflushed(ps)
	return ps.quotaBase + drx + dtx
}

// trackQuotaReset notices a changed quota_reset_at: bytes from then on
// count, including the unflushed ones read after it.
func (r *Reconciler) trackQuotaReset(ps *peerState, row events.Peer) {
	if !ps.quotaKnown {
		// Not known from QuotaUsage at load (the peer appeared since):
		// the lifetime totals are the usage since a reset that never
		// happened; otherwise count from now.
		if row.QuotaResetAt.IsZero() {
			ps.quotaBase = ps.com.UploadBytes + ps.com.DownloadBytes
		}
		ps.quotaKnown = true
		ps.quotaResetAt = row.QuotaResetAt
		ps.quotaRowSeen = true
		return
	}
	if !ps.quotaRowSeen {
		ps.quotaResetAt, ps.quotaRowSeen = row.QuotaResetAt, true
		return
	}
	if !row.QuotaResetAt.Equal(ps.quotaResetAt) {
		drx, dtx := r.unflushed(ps)
		ps.quotaBase = -(drx + dtx)
		ps.quotaResetAt = row.QuotaResetAt
	}
}

// Flush accounts for the counters since the last flush (see the top of
// this file), removes peers whose last bytes are now committed, and
// converges again (quota). Flushes run one at a time; the database write
// runs without the reconciler's lock, so events are applied meanwhile.
func (r *Reconciler) Flush(ctx context.Context) error { return r.flushScope(ctx, scopeDue) }

// scope is which peers a flush writes besides those whose committed state
// must move now (state, leaving, zero baselines, endpoint, handshake).
type scope int

const (
	// scopeDue: also every peer whose counters are due (countersDue): the
	// periodic flush.
	scopeDue scope = iota
	// scopeMust: no others. A flush requested by a state change writes
	// the rows that changed, not a second copy of every busy peer's
	// counters between two periodic flushes; their bytes wait in the
	// counters for the next periodic one.
	scopeMust
	// scopeAll: every peer whose counters moved, idle or not (the last
	// flush before the node stops).
	scopeAll
)

// flushScope is Flush, writing the peers of scope s.
func (r *Reconciler) flushScope(ctx context.Context, s scope) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.mu.Lock()
	loaded := r.loaded
	r.mu.Unlock()
	if !loaded {
		return nil // baselines unknown: nothing can be accounted yet
	}
	start := time.Now()
	err := r.flush(ctx, s)
	r.m.flushDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		r.m.flushErrors.Inc()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updatePeerMetrics()
	// New counters can only change the state of peers with a quota.
	for id, row := range r.rows {
		if row.QuotaBytes > 0 {
			r.dirty[id] = true
		}
	}
	if cerr := r.convergeLocked(ctx, false, false); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

// flush runs with r.flushMu held. Between building a batch and committing
// it, events may change peers: a state change bumps ps.gen (the commit
// then leaves the status dirty), a peer cut meanwhile is not in b.leaving,
// one re-enabled meanwhile is no longer leaving and is not removed, and no
// baseline moves except by a commit, which only flushes make.
func (r *Reconciler) flush(ctx context.Context, s scope) error {
	r.mu.Lock()
	b := r.inflight
	r.mu.Unlock()
	if b != nil {
		if err := r.write(ctx, b); err != nil {
			err = fmt.Errorf("retry usage batch of %s: %w", b.end.Format(time.RFC3339Nano), err)
			r.dropIfRefused(err)
			return err
		}
		r.mu.Lock()
		r.commit(b)
		r.mu.Unlock()
	}

	r.mu.Lock()
	// Counters and the peers they belong to are read under one lock, so
	// a peer added meanwhile cannot look vanished.
	stats, err := r.stats(ctx)
	if err != nil {
		r.mu.Unlock()
		return fmt.Errorf("read counters: %w", err)
	}
	r.epoch = r.cfg.DataPlane.Epoch()
	b = r.build(stats, s)
	if len(b.entries) > 0 {
		r.inflight = b
	}
	r.mu.Unlock()

	if len(b.entries) > 0 {
		if err := r.write(ctx, b); err != nil {
			err = fmt.Errorf("write usage: %w", err)
			r.dropIfRefused(err)
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(b.entries) > 0 {
		r.commit(b)
	}
	return r.removeLeaving(ctx, b.leaving)
}

// write sends a batch; it runs without r.mu.
func (r *Reconciler) write(ctx context.Context, b *batch) error {
	sctx, cancel := r.storeCtx(ctx)
	defer cancel()
	if err := r.cfg.Store.WriteStatus(sctx, r.cfg.NodeID, b.usage, b.status); err != nil {
		return err
	}
	r.mu.Lock()
	r.contact = r.now()
	r.mu.Unlock()
	return nil
}

// dropIfRefused forgets the in-flight batch when the database refused it
// for good: such a refusal rolled the transaction back, so nothing of it
// was committed, and the next flush measures the same bytes again from the
// unchanged baselines. Retrying it as is would stall accounting forever.
func (r *Reconciler) dropIfRefused(err error) {
	if errors.Is(err, events.ErrRefused) {
		r.log.Error("usage batch refused by the database; rebuilding it", "err", err)
		r.mu.Lock()
		r.inflight = nil
		r.mu.Unlock()
	}
}

func (r *Reconciler) commit(b *batch) {
	for _, e := range b.entries {
		e.ps.com = e.com
		e.ps.comGen = e.gen
		e.ps.countedAt = b.end.UnixNano()
		// A reset after these bytes were read set quotaBase to minus
		// them (trackQuotaReset), so adding them always is right.
		e.ps.quotaBase += e.delta
	}
	r.lastFlush = b.end
	r.inflight = nil
}

// build computes the next batch from the counters; the caller holds r.mu
// and no batch is in flight.
func (r *Reconciler) build(stats []PeerStats, s scope) *batch {
	now := r.now().Truncate(time.Microsecond) // the database keeps microseconds
	if !now.After(r.lastFlush) {
		now = r.lastFlush.Add(time.Microsecond) // period_end is a key: never reuse one
	}
	start := r.lastFlush // set at Load for a process's first flush
	if !start.Before(now) {
		start = now.Add(-time.Microsecond) // period_end > period_start
	}
	b := &batch{end: now, entries: make([]entry, 0, len(r.peers)), status: make([]events.PeerStatus, 0, len(r.peers)),
		usage: make([]events.Usage, 0, len(r.peers))}
	byKey := make(map[Key]PeerStats, len(stats))
	for _, s := range stats {
		byKey[s.PublicKey] = s
	}
	ids := make([]string, 0, len(r.peers))
	held := make(map[Key]bool, len(r.peers))
	for id, ps := range r.peers {
		ids = append(ids, id)
		if ps.inPlane {
			held[ps.key] = true
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		r.account(b, r.peers[id], byKey, held, start, s)
	}
	return b
}

// account adds one peer to the batch when a reader needs its committed
// state to move: its state changed, it is leaving or needs a zero
// baseline, its endpoint changed, its handshake moved by IdleInterval, or
// its counters moved, by at least IdleBytes or IdleInterval after their
// last commit. An idle peer's bytes wait in the device's counters until
// then (scopeAll: they do not wait; scopeMust: every peer's wait for the
// next periodic flush); its quota counts them meanwhile.
func (r *Reconciler) account(b *batch, ps *peerState, byKey map[Key]PeerStats, held map[Key]bool, start time.Time, s scope) {
	if !ps.inPlane {
		r.findOnDevice(ps, byKey, held)
	}
	com := ps.com
	must := ps.gen != ps.comGen
	var drx, dtx int64
	var moved bool
	if ps.inPlane {
		drx, dtx, moved = r.readCounters(ps, &com, byKey)
		must = must || ps.leaving
	}
	if r.needsZero(ps) {
		com.RxBaseline, com.TxBaseline = 0, 0
		must = true
	}
	must = must || ps.endpoint != com.Endpoint || r.handshakeDue(ps.handshake, com.LastHandshakeAt)
	if !must && !(moved && (s == scopeAll || s == scopeDue && r.countersDue(ps, drx+dtx))) {
		return
	}
	if ps.inPlane && ps.leaving {
		b.leaving = append(b.leaving, ps)
	}
	com.PeerID, com.NodeID = ps.id, r.cfg.NodeID
	com.State, com.Reason, com.AppliedAt = ps.state, ps.reason, ps.appliedAt
	com.LastHandshakeAt, com.Endpoint = ps.handshake, ps.endpoint
	com.UploadBytes += drx
	com.DownloadBytes += dtx
	_, hasRow := r.rows[ps.id]
	if drx > 0 || dtx > 0 {
		// Usage rows are kept even when the row is gone: billing.
		b.usage = append(b.usage, events.Usage{PeerID: ps.id, PeriodStart: start, PeriodEnd: b.end, UploadBytes: drx, DownloadBytes: dtx})
	}
	if hasRow && com.State != "" {
		b.status = append(b.status, com)
	}
	b.entries = append(b.entries, entry{ps: ps, com: com, gen: ps.gen, delta: drx + dtx})
}

// handshakeDue: a first handshake is written at once, later ones once
// they moved by IdleInterval (a reader needs "connected lately", not the
// two-minute rekeys of every session).
func (r *Reconciler) handshakeDue(seen, committed time.Time) bool {
	if seen.IsZero() || seen.Equal(committed) {
		return false
	}
	return committed.IsZero() || seen.Sub(committed) >= r.cfg.IdleInterval || seen.Before(committed)
}

// countersDue: a busy peer's counters are written every flush, an idle
// one's (keepalives) every IdleInterval.
func (r *Reconciler) countersDue(ps *peerState, moved int64) bool {
	return moved >= r.cfg.IdleBytes || r.now().UnixNano()-ps.countedAt >= int64(r.cfg.IdleInterval)
}

// findOnDevice trusts the device over memory: a peer believed absent (an
// apply that reported an error after all) but present is accounted from
// its baselines, never zeroed under its counters.
func (r *Reconciler) findOnDevice(ps *peerState, byKey map[Key]PeerStats, held map[Key]bool) {
	row, ok := r.rows[ps.id]
	if !ok {
		return
	}
	k, err := parseKey(row.PublicKey)
	if err != nil || held[k] {
		return
	}
	if _, present := byKey[k]; present {
		r.setPlane(ps, true, k)
		ps.read = false
		held[k] = true
	}
}

// readCounters measures the delta of a peer the device holds and moves
// com's baselines to its counters; moved reports a change to commit.
func (r *Reconciler) readCounters(ps *peerState, com *events.PeerStatus, byKey map[Key]PeerStats) (drx, dtx int64, moved bool) {
	s, ok := byKey[ps.key]
	if !ok {
		// Gone from the device behind our back (recreated, removed
		// by hand): its bytes since the last flush went with it.
		r.log.Warn("peer vanished from the data plane", "peer_id", ps.id)
		r.waiting[ps.id] = true // the next converge adds it back
		r.setPlane(ps, false, ps.key)
		ps.leaving, ps.read = false, false
		ps.applied = PeerConfig{}
		return 0, 0, false
	}
	ps.observe(s)
	drx, dtx = delta(*com, r.epoch, s.RxBytes, s.TxBytes)
	moved = drx != 0 || dtx != 0 || com.CounterEpoch != r.epoch || com.RxBaseline != s.RxBytes || com.TxBaseline != s.TxBytes
	com.RxBaseline, com.TxBaseline, com.CounterEpoch = s.RxBytes, s.TxBytes, r.epoch
	return drx, dtx, moved
}

// removeLeaving removes the peers whose final counters were just committed.
func (r *Reconciler) removeLeaving(ctx context.Context, leaving []*peerState) error {
	var keys []Key
	var who []*peerState
	for _, ps := range leaving {
		if ps.inPlane && ps.leaving {
			keys, who = append(keys, ps.key), append(who, ps)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	pctx, cancel := r.planeCtx(ctx)
	failed, err := r.cfg.DataPlane.RemovePeers(pctx, keys)
	cancel()
	if err != nil {
		return fmt.Errorf("remove %d leaving peers: %w", len(keys), err)
	}
	var errs []error
	for _, ps := range who {
		if ferr, bad := failed[ps.key]; bad {
			errs = append(errs, fmt.Errorf("remove peer %s: %w", ps.id, ferr))
			continue
		}
		r.setPlane(ps, false, ps.key)
		ps.leaving, ps.read = false, false
		ps.applied = PeerConfig{}
		r.log.Info("peer removed", "peer_id", ps.id, "state", ps.state, "reason", ps.reason)
		if _, ok := r.rows[ps.id]; !ok {
			delete(r.peers, ps.id)
			r.failing.Forget(ps.id)
			r.m.forget(ps.id)
		} else if r.needsZero(ps) {
			r.kickFlush()
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove leaving peers: %w", errors.Join(errs...))
	}
	return nil
}
