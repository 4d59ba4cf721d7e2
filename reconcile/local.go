package reconcile

// Serving from local state. The node saves its last known desired state
// (LocalState) so that a restart while the control plane is unreachable
// can put its peers back on the device, with expiry and quota enforced,
// instead of leaving every client offline until the database returns.
//
// The saved state is never trusted over the database, and never for
// accounting:
//   - Restore applies the saved rows and adopts what the device holds, as
//     the first resync does, but loads no baselines: nothing is flushed
//     while serving from it (Flush waits for Load, as at any start).
//   - The saved status rows and quota figures only feed the quota
//     estimate meanwhile. A saved baseline can be older than the
//     database's (the process died between a commit and the next save):
//     counting against it could count bytes twice, so when the database
//     answers, everything saved about accounting is forgotten and the
//     status rows are loaded from it as at any start (forgetSaved).
//   - The first successful resync replaces the saved rows with the
//     database's; a peer the saved rows put on the device that the
//     database no longer gives this node is forgotten without a final
//     flush, as a restart that found its key unclaimed would remove it
//     (endLocal); a row that claims that key now is adopted with it as at
//     a start, so counters billed under the old id are not billed again.
//   - On a device that outlived the process (same epoch), a saved row
//     whose key the device does not hold is not applied while offline:
//     the previous process may have removed it after its last save, and
//     a re-add before its zero baseline is committed would measure fresh
//     counters against old ones. The database decides it when it returns.
//
// docs/accounting.md ("Local state") has the argument in full.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/retry"
)

// LocalStateVersion is the format version of LocalState as saved; bump it
// when a field of LocalState or of the rows it holds changes meaning or
// name, so that a file of the old format is ignored instead of misread.
const LocalStateVersion = 1

// ErrServingLocalState is what Ready reports between Restore and the first
// successful resync.
var ErrServingLocalState = errors.New("serving from local state")

// LocalState is the node's last known desired state as the database gave
// it, with the accounting committed so far. It holds preshared keys: whoever
// stores it must keep it as secret as the node's private key.
type LocalState struct {
	Node events.Node `json:"node"`
	// Epoch is the device's counter epoch when saved: equal at restore,
	// the device outlived the process.
	Epoch string        `json:"epoch"`
	Peers []events.Peer `json:"peers"`
	// Status holds the committed status rows (baselines, totals, epoch).
	Status []events.PeerStatus `json:"status"`
	// Quota is, per peer, the bytes used since its quota reset as of its
	// status row; absent: none.
	Quota map[string]int64 `json:"quota"`
}

// WriteTo writes s as JSON, the form json.Unmarshal reads back, one row at
// a time: encoding 10,000 peers whole would hold a second copy of the file
// in memory.
func (s *LocalState) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	e := json.NewEncoder(cw)
	put := func(lit string) { io.WriteString(cw, lit) }
	enc := func(v any) {
		if err := e.Encode(v); err != nil && cw.err == nil {
			cw.err = err
		}
	}
	put(`{"node":`)
	enc(s.Node)
	put(`,"epoch":`)
	enc(s.Epoch)
	put(`,"peers":[`)
	for i := range s.Peers {
		if i > 0 {
			put(",")
		}
		enc(&s.Peers[i])
	}
	put(`],"status":[`)
	for i := range s.Status {
		if i > 0 {
			put(",")
		}
		enc(&s.Status[i])
	}
	put(`],"quota":`)
	enc(s.Quota)
	put("}")
	return cw.n, cw.err
}

// countingWriter counts what it writes and keeps the first error, after
// which it writes nothing.
type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

// defaultSaveInterval: saves are debounced to at most one this often.
const defaultSaveInterval = 5 * time.Second

func newServingGauge(reg prometheus.Registerer) (prometheus.Gauge, error) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "waylume_local_state_serving",
		Help: "1 while the node serves the state it saved, the control plane not having answered since the start."})
	if reg != nil {
		if err := reg.Register(g); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Restore applies a saved state before the first resync, when the control
// plane cannot be reached at start: the node's row, its peers with expiry
// and quota enforced, the peers already on the device adopted. Ready
// reports ErrServingLocalState until the first successful resync, which
// replaces all of it. Call it before Run. An error means nothing is served
// and the node waits for the database as without a saved state.
func (r *Reconciler) Restore(ctx context.Context, s *LocalState) (err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.contain("restore", &err)
	if r.synced || r.loaded {
		return errors.New("reconcile: restore after the database answered")
	}
	if s.Node.ID != r.cfg.NodeID {
		return fmt.Errorf("reconcile: restore: the saved state is node %s's", s.Node.ID)
	}
	// From here on whatever is in memory came from the file: Load forgets
	// its accounting, even if the adoption below fails.
	r.local = true
	r.node = s.Node
	for _, p := range s.Peers {
		if p.NodeID == r.cfg.NodeID {
			r.putRow(p)
		}
	}
	epoch := r.cfg.DataPlane.Epoch()
	r.restoreAccounting(s, epoch)
	if err := r.adoptLocked(ctx, nil); err != nil {
		return err
	}
	if s.Epoch != "" && s.Epoch == epoch {
		for id := range r.rows {
			if ps := r.peers[id]; ps == nil || !ps.inPlane {
				r.dropRow(id)
				delete(r.peers, id)
			}
		}
	}
	r.synced = true
	r.serving.Set(1)
	// Serving now: rows that fail to apply are retried on their own
	// backoff, as after any converge.
	if err := r.convergeLocked(ctx, false, true); err != nil {
		r.log.Warn("apply the saved state", "err", err)
	}
	return nil
}

// restoreAccounting takes the saved status rows and quota figures for the
// quota estimate while offline; forgetSaved drops them at Load.
func (r *Reconciler) restoreAccounting(s *LocalState, epoch string) {
	for _, st := range s.Status {
		if _, ok := r.rows[st.PeerID]; !ok {
			continue
		}
		ps := r.peer(st.PeerID)
		ps.com = st
		ps.state, ps.reason, ps.appliedAt = st.State, st.Reason, st.AppliedAt
		ps.handshake, ps.endpoint = st.LastHandshakeAt, st.Endpoint
	}
	for id := range r.rows {
		ps := r.peer(id)
		base := s.Quota[id]
		if base < 0 && ps.com.CounterEpoch != epoch {
			// Negative: a reset came after bytes not yet committed, which
			// went with the old device.
			base = 0
		}
		ps.quotaBase, ps.quotaKnown = base, true
	}
}

// forgetSaved drops the saved accounting once the database's is in hand;
// loadLocked calls it before taking the loaded rows.
func (r *Reconciler) forgetSaved() {
	if !r.local {
		return
	}
	for _, ps := range r.peers {
		ps.com = events.PeerStatus{}
		ps.quotaBase, ps.quotaKnown, ps.quotaRowSeen, ps.quotaResetAt = 0, false, false, time.Time{}
	}
}

// endLocal runs when the first snapshot after Restore has replaced the
// rows: peers no row of the database claims are forgotten (the full
// converge that follows removes them from the device). It returns the keys
// those peers held on the device, for adoption by the rows that claim them
// now.
func (r *Reconciler) endLocal() map[Key]bool {
	if !r.local {
		return nil
	}
	var freed map[Key]bool
	for id, ps := range r.peers {
		if _, ok := r.rows[id]; ok {
			continue
		}
		if ps.inPlane {
			if freed == nil {
				freed = map[Key]bool{}
			}
			freed[ps.key] = true
			r.setPlane(ps, false, ps.key)
		}
		delete(r.peers, id)
		r.failing.Forget(id)
		r.m.forget(id)
	}
	r.local = false
	r.serving.Set(0)
	r.log.Info("control plane reached; its rows replace the saved state")
	return freed
}

// refreshLocal reads the counters while serving from local state, when no
// flush does, and decides the peers with a quota again: quotas hold offline
// too, to within one usage interval as online.
func (r *Reconciler) refreshLocal(ctx context.Context) (err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.contain("quota from local state", &err)
	if !r.local || !r.synced || r.loaded {
		return nil
	}
	st, err := r.stats(ctx)
	if err != nil {
		return fmt.Errorf("read counters: %w", err)
	}
	r.epoch = r.cfg.DataPlane.Epoch()
	for _, s := range st {
		if ps := r.held[s.PublicKey]; ps != nil && ps.inPlane {
			ps.observe(s)
		}
	}
	r.updatePeerMetrics()
	for id, row := range r.rows {
		if row.QuotaBytes > 0 {
			r.dirty[id] = true
		}
	}
	return r.convergeLocked(ctx, false, false)
}

// localStateLocked is what to save; nil until the database has answered
// (a state served from the file is not saved back over it).
func (r *Reconciler) localStateLocked() *LocalState {
	if !r.synced || !r.loaded || r.local {
		return nil
	}
	s := &LocalState{Node: r.node, Epoch: r.epoch, Peers: make([]events.Peer, 0, len(r.rows)),
		Status: make([]events.PeerStatus, 0, len(r.peers)), Quota: map[string]int64{}}
	for _, p := range r.rows {
		s.Peers = append(s.Peers, p)
	}
	for id, ps := range r.peers {
		if _, ok := r.rows[id]; !ok {
			continue
		}
		if ps.com.PeerID != "" {
			s.Status = append(s.Status, ps.com)
		}
		if ps.quotaKnown && ps.quotaBase != 0 {
			s.Quota[id] = ps.quotaBase
		}
	}
	// Sorted: the same state is the same file, which is then not rewritten.
	slices.SortFunc(s.Peers, func(a, b events.Peer) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(s.Status, func(a, b events.PeerStatus) int { return cmp.Compare(a.PeerID, b.PeerID) })
	return s
}

// requestSave asks the save loop for a save soon.
func (r *Reconciler) requestSave() {
	if r.cfg.SaveLocal != nil {
		poke(r.save)
	}
}

// saveLoop saves when asked, at most once every SaveInterval.
func (r *Reconciler) saveLoop(ctx context.Context) {
	if r.cfg.SaveLocal == nil {
		return
	}
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.save:
		}
		if wait := r.cfg.SaveInterval - time.Since(last); wait > 0 && !retry.Sleep(ctx, wait) {
			return
		}
		select {
		case <-r.save: // asked again meanwhile: this save covers it
		default:
		}
		last = time.Now()
		r.warn(ctx, "save local state", r.saveLocal())
		r.afterBulk()
	}
}

// saveLocal hands the current state to Config.SaveLocal; the copy is taken
// under the lock, the write runs without it.
func (r *Reconciler) saveLocal() error {
	if r.cfg.SaveLocal == nil {
		return nil
	}
	r.mu.Lock()
	s := r.localStateLocked()
	r.mu.Unlock()
	if s == nil {
		return nil
	}
	return r.cfg.SaveLocal(s)
}
