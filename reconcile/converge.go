package reconcile

// Converging is the one path from (desired rows, what the data plane holds)
// to actions. A run configures the node, chooses the rows to decide, plans
// each peer, applies the plan in one data plane call, and schedules what
// comes next (expiry, retries of failed rows). Running it twice is a no-op.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/waylume/waylume-node/events"
)

// plan is one converge run: the rows it decides and what it sends.
type plan struct {
	full   bool      // send every peer the node should hold (SyncPeers)
	now    time.Time // decisions are taken as of now
	ids    []string  // peers to plan, sorted
	dec    map[string]decision
	subset map[string]bool // the rows decided; nil: every row
	set    []PeerConfig    // what to send, and for whom
	setFor []*peerState
	kick   bool // flush soon: a peer is leaving or a status changed
	errs   []error
}

func (p *plan) send(ps *peerState, c PeerConfig) {
	p.set, p.setFor = append(p.set, c), append(p.setFor, ps)
}

// Converge applies the known rows to the data plane without rereading the
// store (the expiry timer and tests use it).
func (r *Reconciler) Converge(ctx context.Context) (err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.contain("converge", &err)
	// Time and counters only change the state of rows that expire or
	// have a quota.
	for id, row := range r.rows {
		if !row.ExpiresAt.IsZero() || row.QuotaBytes > 0 {
			r.dirty[id] = true
		}
	}
	return r.convergeLocked(ctx, false, false)
}

// retryFailed converges the rows whose apply failed and whose backoff has
// run out, through the same path as every other change.
func (r *Reconciler) retryFailed(ctx context.Context) (err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.contain("retry failed rows", &err)
	now := r.now()
	// Every due row is sent (and failed or forgotten) or forgotten by the
	// converge; one it leaves unresolved, as a contained panic does, waits
	// its next delay instead of spinning the timer.
	defer r.postpone(now)
	for _, id := range r.failing.Due(now) {
		r.dirty[id] = true
	}
	return r.convergeLocked(ctx, false, false)
}

func (r *Reconciler) postpone(now time.Time) {
	for _, id := range r.failing.Due(now) {
		r.failing.Fail(id, now)
	}
	r.scheduleRetry()
}

// convergeLocked runs one converge. fullApply sends every peer the node
// should hold (the data plane removes the rest and repairs drift);
// otherwise only what changed. decideAll evaluates every row
// (time-dependent states: expiry, quota); otherwise only the rows changed
// since the last converge and those they may conflict with (closure),
// which keeps an event O(changed) at 10,000 peers.
func (r *Reconciler) convergeLocked(ctx context.Context, fullApply, decideAll bool) error {
	if !r.synced {
		return nil
	}
	p := &plan{full: fullApply, now: r.now()}
	start := time.Now()
	defer func() {
		kind := "partial"
		if p.full {
			kind = "full"
		}
		r.m.duration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	}()
	r.configureNode(ctx, p)
	r.chooseRows(p, decideAll)
	// Most rows send one config: sized up front, a full run's 10,000
	// do not regrow the slices (megabytes of garbage at every resync).
	p.set, p.setFor = make([]PeerConfig, 0, len(p.ids)), make([]*peerState, 0, len(p.ids))
	// A changed epoch means the device restarted under us: every counter
	// is new.
	r.epoch = r.cfg.DataPlane.Epoch()
	for _, id := range p.ids {
		r.planPeer(p, id)
	}
	r.forgetUnsent(p)
	r.applyPlan(ctx, p)
	r.schedule(p)
	if p.kick {
		r.kickFlush()
	}
	if err := errors.Join(p.errs...); err != nil {
		r.m.errors.Inc()
		return err
	}
	return nil
}

// configureNode applies a changed node row; a new pool makes the run full.
func (r *Reconciler) configureNode(ctx context.Context, p *plan) {
	nc := NodeConfig{Address: r.node.Address, Address6: r.node.Address6, ListenPort: r.node.ListenPort, MTU: r.node.MTU, DNS: r.node.DNS}
	if !r.node.Address.IsValid() || (r.nodeSet && nc.Equal(r.nodeCfg)) {
		return
	}
	pctx, cancel := r.planeCtx(ctx)
	defer cancel()
	if err := r.cfg.DataPlane.Configure(pctx, nc); err != nil {
		p.errs = append(p.errs, fmt.Errorf("configure node: %w", err))
		return
	}
	// A new pool may have rebuilt the shaping tree: resend all.
	p.full = p.full || (r.nodeSet && r.nodeCfg.Address.Masked() != nc.Address.Masked())
	r.nodeCfg, r.nodeSet = nc, true
}

// chooseRows decides the dirty rows and those they may conflict with, or
// every row, and lists the peers to plan.
func (r *Reconciler) chooseRows(p *plan, decideAll bool) {
	for id := range r.waiting {
		r.dirty[id] = true
	}
	r.waiting = map[string]bool{}
	if !decideAll && !p.full && !r.decideAll && r.lastDec != nil && len(r.dirty) <= len(r.rows)/4+16 {
		if c, ok := r.closure(r.dirty); ok {
			p.subset = c
		}
	}
	if p.subset == nil {
		r.decideEvery(p)
	} else {
		r.decideSubset(p)
	}
	r.dirty = map[string]bool{}
	r.decideAll = false
	slices.Sort(p.ids)
}

func (r *Reconciler) decideEvery(p *plan) {
	for id, row := range r.rows {
		r.trackQuotaReset(r.peer(id), row)
	}
	if r.lastDec == nil || len(r.lastDec) > 2*len(r.rows)+64 {
		r.lastDec = make(map[string]decision, len(r.rows)) // maps never shrink
	}
	decideInto(r.lastDec, r.node, r.self, r.rows, p.now, r.quotaUsed)
	p.dec = r.lastDec
	p.ids = make([]string, 0, len(r.peers)+len(p.dec))
	for id := range r.peers {
		p.ids = append(p.ids, id)
	}
	for id := range p.dec {
		if _, ok := r.peers[id]; !ok {
			p.ids = append(p.ids, id)
		}
	}
}

// decideSubset decides the rows of p.subset alone and patches the last
// decisions with the result.
func (r *Reconciler) decideSubset(p *plan) {
	p.dec = r.lastDec
	sub := make(map[string]events.Peer, len(p.subset))
	for id := range p.subset {
		p.ids = append(p.ids, id)
		if row, ok := r.rows[id]; ok {
			sub[id] = row
			r.trackQuotaReset(r.peer(id), row)
		}
	}
	part := decide(r.node, r.self, sub, p.now, r.quotaUsed)
	for id := range p.subset {
		if d, ok := part[id]; ok {
			p.dec[id] = d
		} else {
			delete(p.dec, id)
		}
	}
}

// planPeer turns one peer's decision into what to send, if anything.
func (r *Reconciler) planPeer(p *plan, id string) {
	d, desired := p.dec[id]
	ps := r.peer(id)
	if !desired {
		// Row gone (deleted, moved to another node).
		if ps.inPlane {
			r.leave(p, ps)
		} else {
			delete(r.peers, id)
		}
		return
	}
	r.noteState(p, ps, d)
	switch {
	case d.state != events.StateActive:
		if ps.inPlane {
			r.leave(p, ps)
		}
	case ps.inPlane && ps.key != d.cfg.PublicKey:
		// The row's key changed: the old key leaves first (its last
		// bytes are flushed), the new one comes after.
		r.waiting[id] = true
		r.leave(p, ps)
	case !ps.inPlane && r.mustWait(p, ps, d):
		// Decided again at the next converge.
	case p.full || !ps.inPlane || ps.leaving || !ps.applied.Equal(d.cfg):
		p.send(ps, d.cfg)
	}
}

// noteState records a changed state or reason; the next flush writes it.
// A peer the data plane refused stays rejected while its row would be
// active: only an apply that takes clears it (applied).
func (r *Reconciler) noteState(p *plan, ps *peerState, d decision) {
	if ps.refused {
		if d.state == events.StateActive {
			return
		}
		ps.refused = false
	}
	if ps.state == d.state && ps.reason == d.reason {
		return
	}
	if d.state != events.StateActive || ps.state != "" {
		r.log.Info("peer state", "peer_id", ps.id, "state", d.state, "reason", d.reason)
	}
	ps.state, ps.reason = d.state, d.reason
	ps.gen++
	p.kick = true
}

// leave cuts a peer the device holds: nothing is routed to or from it
// while its final usage is flushed, after which the flush removes it
// (usage.go). A full run, or the retry of a cut that failed, sends the
// cut again.
func (r *Reconciler) leave(p *plan, ps *peerState) {
	switch {
	case !ps.leaving:
		ps.leaving, p.kick = true, true
		p.send(ps, cut(ps.key))
	case p.full || r.failing.Failing(ps.id):
		p.send(ps, cut(ps.key))
	}
}

// mustWait holds back adding a peer while something only the reconciler
// itself resolves stands in the way.
func (r *Reconciler) mustWait(p *plan, ps *peerState, d decision) bool {
	if o := r.held[d.cfg.PublicKey]; o != nil && o != ps {
		r.waiting[ps.id] = true
		return true // the key's previous holder is still leaving
	}
	if r.needsZero(ps) {
		r.waiting[ps.id] = true
		p.kick = true // persist a zero baseline first (usage.go)
		return true
	}
	return false
}

// forgetUnsent drops the backoff of failing rows this run planned but had
// nothing to send for: nothing of theirs is left to retry.
func (r *Reconciler) forgetUnsent(p *plan) {
	if r.failing.Len() == 0 {
		return
	}
	sent := map[string]bool{}
	for _, ps := range p.setFor {
		if r.failing.Failing(ps.id) {
			sent[ps.id] = true
		}
	}
	for _, id := range p.ids {
		if !sent[id] {
			r.failing.Forget(id)
		}
	}
}

// applyPlan sends the plan in one call and records what took; a peer that
// failed, or all of them when the call did, is retried on its own backoff.
func (r *Reconciler) applyPlan(ctx context.Context, p *plan) {
	if len(p.set) == 0 && !p.full {
		return
	}
	pctx, cancel := r.planeCtx(ctx)
	var failed map[Key]error
	var err error
	if p.full {
		failed, err = r.cfg.DataPlane.SyncPeers(pctx, p.set)
	} else {
		failed, err = r.cfg.DataPlane.UpdatePeers(pctx, p.set)
	}
	cancel()
	now := r.now() // backoff counts from the failure, however long the call took
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("apply %d peers: %w", len(p.set), err))
		for _, ps := range p.setFor {
			r.failing.Fail(ps.id, now)
		}
		return
	}
	for i, c := range p.set {
		ps := p.setFor[i]
		if ferr, bad := failed[c.PublicKey]; bad {
			p.errs = append(p.errs, fmt.Errorf("apply peer %s: %w", ps.id, ferr))
			r.failing.Fail(ps.id, now)
			if reason, ok := refusalReason(ferr); ok && len(c.AllowedIPs) > 0 {
				r.refuse(p, ps, reason)
			}
			continue
		}
		r.applied(p, ps, c)
	}
}

// refusal is a data plane error that refuses a peer rather than failing to
// reach the device: the peer is not served (netctl's limits that could not
// be installed, say), and PeerReason says why for peer_status.
type refusal interface{ PeerReason() string }

// maxReason is peer_status.reason's limit.
const maxReason = 256

func refusalReason(err error) (string, bool) {
	var r refusal
	if !errors.As(err, &r) {
		return "", false
	}
	reason := r.PeerReason()
	return strings.ToValidUTF8(reason[:min(len(reason), maxReason)], ""), true
}

// refuse marks a peer rejected with the data plane's reason; it is retried
// on its backoff like every failed row, and the apply that takes makes it
// active again.
func (r *Reconciler) refuse(p *plan, ps *peerState, reason string) {
	ps.refused = true
	if ps.state == events.StateRejected && ps.reason == reason {
		return
	}
	r.log.Warn("peer not served", "peer_id", ps.id, "reason", reason)
	ps.state, ps.reason = events.StateRejected, reason
	ps.gen++
	p.kick = true
}

// applied records a config the data plane took.
func (r *Reconciler) applied(p *plan, ps *peerState, c PeerConfig) {
	if ps.refused && len(c.AllowedIPs) > 0 {
		ps.refused = false
		ps.state, ps.reason = events.StateActive, ""
		ps.gen++
		p.kick = true
	}
	if !ps.inPlane || ps.key != c.PublicKey {
		ps.read = false // a new WireGuard peer: its counters start at zero
	}
	r.setPlane(ps, true, c.PublicKey)
	if len(c.AllowedIPs) > 0 {
		ps.leaving = false
		if !ps.applied.Equal(c) {
			ps.appliedAt = p.now
			ps.gen++
			p.kick = true
		}
	}
	ps.applied = c
	r.failing.Forget(ps.id)
}

// schedule points the timers at the next expiry and the next row retry.
// A partial run only ever brings the next expiry closer.
func (r *Reconciler) schedule(p *plan) {
	r.scheduleRetry()
	if p.subset == nil {
		r.scheduleExpiry(p.dec, p.now)
		r.updatePeerGauges()
		return
	}
	for id := range p.subset {
		if d, ok := p.dec[id]; ok && d.state == events.StateActive {
			if exp := r.rows[id].ExpiresAt; !exp.IsZero() && exp.After(p.now) && (r.nextExpiry.IsZero() || exp.Before(r.nextExpiry)) {
				r.nextExpiry = exp
				poke(r.rearm)
			}
		}
	}
}

// scheduleExpiry remembers the next instant an active peer expires; Run's
// timer converges then, from memory, so expiry works with the database down.
func (r *Reconciler) scheduleExpiry(dec map[string]decision, now time.Time) {
	var next time.Time
	for id, d := range dec {
		exp := r.rows[id].ExpiresAt
		if d.state == events.StateActive && !exp.IsZero() && exp.After(now) && (next.IsZero() || exp.Before(next)) {
			next = exp
		}
	}
	if !next.Equal(r.nextExpiry) {
		r.nextExpiry = next
		poke(r.rearm)
	}
}

// scheduleRetry tells the timer loop when the next failed row is due.
func (r *Reconciler) scheduleRetry() {
	next, _ := r.failing.Next()
	if !next.Equal(r.nextRetry) {
		r.nextRetry = next
		poke(r.rearm)
	}
}
