package reconcile

// Locking: one mutex (Reconciler.mu) guards all state below it. Event
// batches, resyncs and the expiry timer take it for their whole run, data
// plane and store calls included. Usage flushes are serialised by flushMu
// and take mu for everything but the database write (usage.go says why
// that is safe). Store calls have their own timeout so a hung database
// cannot hold mu forever.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/waylume/waylume-node/events"
)

// Config wires a Reconciler.
type Config struct {
	NodeID    string
	Store     Store
	DataPlane DataPlane
	Log       *slog.Logger
	// Registerer receives the metrics; nil: not registered.
	Registerer prometheus.Registerer
	// IsNotFound tells Store.Peer's "gone" error from a read failure.
	IsNotFound func(error) bool
	// IsRejected tells a write the database refuses for good (permission,
	// constraint) from one that may succeed later; nil: never.
	IsRejected func(error) bool
	// Now is the clock; nil: time.Now.
	Now func() time.Time

	ResyncInterval    time.Duration // full resync; default 60s
	UsageInterval     time.Duration // usage flush; default 60s
	HeartbeatInterval time.Duration // default 30s
	StoreTimeout      time.Duration // per store call; default 10s

	PublicKey string // written in the heartbeat
	Version   string
}

// Reconciler keeps the data plane equal to the node's rows.
type Reconciler struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	queue *events.Queue
	m     *metrics
	kick  chan struct{} // capacity 1: flush soon (a peer is leaving, a status changed)
	rearm chan struct{} // capacity 1: the next expiry changed
	self  Key           // the node's public key, which no peer row may use

	flushMu sync.Mutex // one usage flush at a time; taken before mu

	mu         sync.Mutex
	loaded     bool // status rows (baselines) loaded
	synced     bool // one snapshot applied
	adopted    bool // the data plane's peers were matched to rows
	node       events.Node
	nodeCfg    NodeConfig
	nodeSet    bool
	rows       map[string]events.Peer // desired rows, from snapshots and events
	peers      map[string]*peerState  // every peer the node knows: rows, statuses, data plane
	nextExpiry time.Time
	inflight   *batch // a usage batch whose commit is not known to have happened
	lastFlush  time.Time
	epoch      string
	contact    time.Time // last successful store call

	// For the partial path: what each row claims (raw key, addresses),
	// the rows changed since the last converge, the last decisions, and
	// which peer holds each key on the device.
	byKey     map[string][]string // usually one id: a slice is far smaller than a map
	byAddr    map[netip.Addr][]string
	dirty     map[string]bool
	retry     map[string]bool // rows whose action waits (a key still leaving, a zero baseline, a failed apply)
	decideAll bool
	lastDec   map[string]decision
	held      map[Key]*peerState
}

// peerState is everything the node tracks for one peer id. The bools sit
// together before key (a byte array, no alignment): scattered, their
// padding took the struct past the 512-byte size class, 64 bytes more per
// peer.
type peerState struct {
	id string
	// Data plane.
	inPlane bool // WireGuard holds key for this peer
	leaving bool // cut; removed after its final usage is committed
	// Accounting flags (see rx/tx and quotaBase below).
	read         bool // rx/tx were read from the current key's counters
	quotaKnown   bool // quotaBase is meaningful
	quotaRowSeen bool // quotaResetAt came from the row
	key          Key
	applied      PeerConfig // last config programmed
	// Evaluation, written to peer_status.
	state, reason string
	appliedAt     time.Time
	gen           uint64 // bumps when state/reason/appliedAt change
	comGen        uint64 // gen of the committed status row
	// Accounting. com is the status row as committed in the database (its
	// baselines are the counters already accounted for); rx/tx the last read.
	com          events.PeerStatus
	rx, tx       int64
	handshake    time.Time
	endpoint     string
	quotaBase    int64 // bytes since quota reset as of com
	quotaResetAt time.Time
}

// New returns a Reconciler; Run starts it.
func New(cfg Config) (*Reconciler, error) {
	if cfg.NodeID == "" || cfg.Store == nil || cfg.DataPlane == nil {
		return nil, errors.New("reconcile: NodeID, Store and DataPlane are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IsNotFound == nil {
		cfg.IsNotFound = func(error) bool { return false }
	}
	if cfg.IsRejected == nil {
		cfg.IsRejected = func(error) bool { return false }
	}
	cfg.ResyncInterval = orDefault(cfg.ResyncInterval, 60*time.Second)
	cfg.UsageInterval = orDefault(cfg.UsageInterval, 60*time.Second)
	cfg.HeartbeatInterval = orDefault(cfg.HeartbeatInterval, 30*time.Second)
	cfg.StoreTimeout = orDefault(cfg.StoreTimeout, 10*time.Second)
	var self Key
	if cfg.PublicKey != "" {
		k, err := parseKey(cfg.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("reconcile: node public key %w", err)
		}
		self = k
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	r := &Reconciler{
		cfg: cfg, log: cfg.Log, now: cfg.Now, m: m, self: self,
		kick:  make(chan struct{}, 1),
		rearm: make(chan struct{}, 1),
		rows:  map[string]events.Peer{},
		peers: map[string]*peerState{},
		byKey: map[string][]string{}, byAddr: map[netip.Addr][]string{},
		dirty: map[string]bool{}, retry: map[string]bool{}, held: map[Key]*peerState{},
	}
	r.queue = events.NewQueue(events.QueueOptions{MaxBatch: 4096, OnCoalesce: func(n int) { m.coalesced.Add(float64(n)) }})
	return r, nil
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

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Sink is where event sources deliver: it counts and queues.
func (r *Reconciler) Sink() events.Sink {
	return events.SinkFunc(func(e events.Event) {
		r.m.received.WithLabelValues(cmp.Or(e.Source, "unknown")).Inc()
		r.queue.Add(e)
	})
}

func (r *Reconciler) storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.StoreTimeout)
}

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
	var quota map[string]int64
	if qs, ok := r.cfg.Store.(QuotaStore); ok {
		if quota, err = qs.QuotaUsage(sctx, r.cfg.NodeID); err != nil {
			return fmt.Errorf("load quota usage: %w", err)
		}
	}
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

func (r *Reconciler) peer(id string) *peerState {
	ps := r.peers[id]
	if ps == nil {
		ps = &peerState{id: id}
		r.peers[id] = ps
	}
	return ps
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
	if err := r.loadLocked(ctx); err != nil {
		return err
	}
	sctx, cancel := r.storeCtx(ctx)
	node, peers, err := r.cfg.Store.Snapshot(sctx, r.cfg.NodeID)
	cancel()
	if err != nil {
		return fmt.Errorf("resync: %w", err)
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
	if !r.adopted {
		if err := r.adoptLocked(ctx); err != nil {
			return err
		}
	}
	r.synced = true
	return r.convergeLocked(ctx, true, true)
}

// adoptLocked matches the peers the data plane already holds (after a
// restart) to rows by public key, so that unchanged peers are kept as they
// are and leaving ones get their final usage flushed. Keys no row claims
// are left to the full sync to remove: with the row gone, their last bytes
// cannot be attributed (DESIGN: rows deleted while the node was down).
func (r *Reconciler) adoptLocked(ctx context.Context) error {
	st, err := r.cfg.DataPlane.Stats(ctx)
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
		if !d.keyOK || !ok || taken[d.key] {
			continue
		}
		taken[d.key] = true
		ps := r.peer(id)
		r.setPlane(ps, true, d.key)
		ps.observe(s)
	}
	r.adopted = true
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

// maxFetchesPerBatch: a batch needing more single-row reads than this
// (LISTEN events carry no rows) is served by one snapshot instead.
const maxFetchesPerBatch = 64

// Handle applies one batch of events; Resync events reread everything.
func (r *Reconciler) Handle(ctx context.Context, batch []events.Event) (err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.contain("handle events", &err)
	start := r.now()
	resync := !r.synced
	// Rows to fetch one by one are fetched under the lock: past a handful,
	// one snapshot is cheaper and bounds the time the lock is held.
	fetches := 0
	for _, e := range batch {
		if (e.Kind == events.PeerChanged && e.Peer == nil) || (e.Kind == events.NodeChanged && e.Node == nil) {
			fetches++
		}
	}
	if fetches > maxFetchesPerBatch {
		resync = true
	}
	var errs []error
	for _, e := range batch {
		switch e.Kind {
		case events.Resync:
			resync = true
		case events.PeerDeleted:
			r.dropRow(e.ID)
		case events.PeerChanged:
			if e.Peer != nil {
				r.setRow(*e.Peer, true)
				continue
			}
			if resync { // the snapshot rereads it
				continue
			}
			sctx, cancel := r.storeCtx(ctx)
			p, err := r.cfg.Store.Peer(sctx, r.cfg.NodeID, e.ID)
			cancel()
			switch {
			case err == nil:
				r.setRow(p, false)
			case r.cfg.IsNotFound(err):
				r.dropRow(e.ID)
			default:
				// Keep what is applied; the resync rereads it.
				errs = append(errs, fmt.Errorf("fetch peer %s: %w", e.ID, err))
				resync = true
			}
		case events.NodeChanged:
			if e.Node != nil {
				r.node, r.decideAll = *e.Node, true
				continue
			}
			if resync {
				continue
			}
			sctx, cancel := r.storeCtx(ctx)
			n, err := r.cfg.Store.Node(sctx, r.cfg.NodeID)
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("fetch node: %w", err))
				resync = true
				continue
			}
			r.node, r.decideAll = n, true
		}
	}
	if resync {
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

// setPlane records whether ps holds key k on the device.
func (r *Reconciler) setPlane(ps *peerState, in bool, k Key) {
	if ps.inPlane && r.held[ps.key] == ps {
		delete(r.held, ps.key)
	}
	ps.inPlane, ps.key = in, k
	if in {
		r.held[k] = ps
	}
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

// convergeLocked is the one path from (desired rows, data plane) to
// actions. fullApply sends every peer the node should hold (the data plane
// removes the rest and repairs drift); otherwise only what changed.
// decideAll evaluates every row (time-dependent states: expiry, quota);
// otherwise only the rows changed since the last converge and those they
// may conflict with (closure), which keeps an event O(changed) at 10,000
// peers.
func (r *Reconciler) convergeLocked(ctx context.Context, fullApply, decideAll bool) error {
	if !r.synced {
		return nil
	}
	full := fullApply
	start := time.Now()
	defer func() {
		kind := "partial"
		if full {
			kind = "full"
		}
		r.m.duration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	}()
	now := r.now()
	var errs []error

	nc := NodeConfig{Address: r.node.Address, Address6: r.node.Address6, ListenPort: r.node.ListenPort, MTU: r.node.MTU, DNS: r.node.DNS}
	if r.node.Address.IsValid() && (!r.nodeSet || !nc.Equal(r.nodeCfg)) {
		if err := r.cfg.DataPlane.Configure(ctx, nc); err != nil {
			errs = append(errs, fmt.Errorf("configure node: %w", err))
		} else {
			// A new pool may have rebuilt the shaping tree: resend all.
			full = full || (r.nodeSet && r.nodeCfg.Address.Masked() != nc.Address.Masked())
			r.nodeCfg, r.nodeSet = nc, true
		}
	}

	for id := range r.retry {
		r.dirty[id] = true
	}
	r.retry = map[string]bool{}
	var ids []string
	var subset map[string]bool
	if !decideAll && !full && !r.decideAll && r.lastDec != nil && len(r.dirty) <= len(r.rows)/4+16 {
		if c, ok := r.closure(r.dirty); ok {
			subset = c
		}
	}
	dec := r.lastDec
	if subset == nil {
		for id, row := range r.rows {
			r.trackQuotaReset(r.peer(id), row)
		}
		if r.lastDec == nil || len(r.lastDec) > 2*len(r.rows)+64 {
			r.lastDec = make(map[string]decision, len(r.rows)) // maps never shrink
		}
		decideInto(r.lastDec, r.node, r.self, r.rows, now, r.quotaUsed)
		dec = r.lastDec
		ids = make([]string, 0, len(r.peers)+len(dec))
		for id := range r.peers {
			ids = append(ids, id)
		}
		for id := range dec {
			if _, ok := r.peers[id]; !ok {
				ids = append(ids, id)
			}
		}
	} else {
		sub := make(map[string]events.Peer, len(subset))
		for id := range subset {
			ids = append(ids, id)
			if row, ok := r.rows[id]; ok {
				sub[id] = row
				r.trackQuotaReset(r.peer(id), row)
			}
		}
		part := decide(r.node, r.self, sub, now, r.quotaUsed)
		for id := range subset {
			if d, ok := part[id]; ok {
				dec[id] = d
			} else {
				delete(dec, id)
			}
		}
	}
	r.dirty = map[string]bool{}
	r.decideAll = false
	slices.Sort(ids)
	epoch := r.cfg.DataPlane.Epoch()
	if epoch != r.epoch {
		// The device restarted under us: every counter is new.
		r.epoch = epoch
	}
	var set []PeerConfig
	var setFor []*peerState
	send := func(ps *peerState, c PeerConfig) { set, setFor = append(set, c), append(setFor, ps) }
	kick := false
	for _, id := range ids {
		d, desired := dec[id]
		ps := r.peer(id)
		if !desired {
			// Row gone (deleted, moved to another node).
			if ps.inPlane {
				if !ps.leaving {
					ps.leaving, kick = true, true
					send(ps, cut(ps.key))
				} else if full {
					send(ps, cut(ps.key))
				}
			} else {
				delete(r.peers, id)
			}
			continue
		}
		if ps.state != d.state || ps.reason != d.reason {
			if d.state != events.StateActive || ps.state != "" {
				r.log.Info("peer state", "peer_id", id, "state", d.state, "reason", d.reason)
			}
			ps.state, ps.reason = d.state, d.reason
			ps.gen++
			kick = true
		}
		if d.state != events.StateActive {
			if ps.inPlane {
				if !ps.leaving {
					ps.leaving, kick = true, true
					send(ps, cut(ps.key))
				} else if full {
					send(ps, cut(ps.key))
				}
			}
			continue
		}
		if ps.inPlane && ps.key != d.cfg.PublicKey {
			// The row's key changed: the old key leaves first (its last
			// bytes are flushed), the new one comes after.
			r.retry[id] = true
			if !ps.leaving {
				ps.leaving, kick = true, true
				send(ps, cut(ps.key))
			} else if full {
				send(ps, cut(ps.key))
			}
			continue
		}
		if !ps.inPlane {
			if o := r.held[d.cfg.PublicKey]; o != nil && o != ps {
				r.retry[id] = true
				continue // the key's previous holder is still leaving
			}
			if r.needsZero(ps) {
				r.retry[id] = true
				kick = true // persist a zero baseline first (usage.go)
				continue
			}
		}
		if full || !ps.inPlane || ps.leaving || !ps.applied.Equal(d.cfg) {
			send(ps, d.cfg)
		}
	}

	if len(set) > 0 || full {
		failed, err := r.cfg.DataPlane.ApplyPeers(ctx, set, nil, full)
		if err != nil {
			errs = append(errs, fmt.Errorf("apply %d peers: %w", len(set), err))
			for _, ps := range setFor {
				r.retry[ps.id] = true
			}
		} else {
			for i, c := range set {
				ps := setFor[i]
				if ferr, bad := failed[c.PublicKey]; bad {
					errs = append(errs, fmt.Errorf("apply peer %s: %w", ps.id, ferr))
					r.retry[ps.id] = true
					continue
				}
				if !ps.inPlane || ps.key != c.PublicKey {
					ps.read = false // a new WireGuard peer: its counters start at zero
				}
				r.setPlane(ps, true, c.PublicKey)
				if len(c.AllowedIPs) > 0 {
					ps.leaving = false
					if !ps.applied.Equal(c) {
						ps.appliedAt = now
						ps.gen++
						kick = true
					}
				}
				ps.applied = c
			}
		}
	}
	if subset == nil {
		r.scheduleExpiry(dec, now)
		r.updatePeerGauges()
	} else {
		for id := range subset {
			if d, ok := dec[id]; ok && d.state == events.StateActive {
				if exp := r.rows[id].ExpiresAt; !exp.IsZero() && exp.After(now) && (r.nextExpiry.IsZero() || exp.Before(r.nextExpiry)) {
					r.nextExpiry = exp
					poke(r.rearm)
				}
			}
		}
	}
	if kick {
		r.kickFlush()
	}
	if err := errors.Join(errs...); err != nil {
		r.m.errors.Inc()
		return err
	}
	return nil
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

func (r *Reconciler) kickFlush() { poke(r.kick) }

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Run applies events from Sink, resyncs every ResyncInterval, enforces
// expiry, flushes usage and sends heartbeats until ctx ends. Then it stops
// taking events, flushes usage once more and marks the node offline; the
// data plane is left as it is.
func (r *Reconciler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.eventLoop(ctx)
	}()
	r.timerLoop(ctx)
	wg.Wait()
	r.queue.Close()

	// Shutdown: a fresh context, the caller's has ended.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*r.cfg.StoreTimeout)
	defer cancel()
	var errs []error
	if err := r.Flush(sctx); err != nil {
		errs = append(errs, fmt.Errorf("final usage flush: %w", err))
	}
	if err := r.heartbeat(sctx, "offline"); err != nil {
		errs = append(errs, fmt.Errorf("mark offline: %w", err))
	}
	return errors.Join(errs...)
}

// Ready reports nil once the first snapshot is applied and while the
// control plane answered within grace.
func (r *Reconciler) Ready(grace time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.synced {
		return errors.New("waiting for the first snapshot of the node's rows")
	}
	if since := r.now().Sub(r.contact); since > grace {
		return fmt.Errorf("control plane unreachable for %s", since.Round(time.Second))
	}
	return nil
}

func (r *Reconciler) eventLoop(ctx context.Context) {
	for {
		batch, ok := r.queue.Get(ctx)
		if !ok {
			return
		}
		if err := r.Handle(ctx, batch); err != nil && ctx.Err() == nil {
			r.log.Warn("apply events", "events", len(batch), "err", err)
		}
		r.queue.Done(batch)
	}
}

func (r *Reconciler) timerLoop(ctx context.Context) {
	resync := time.NewTicker(r.cfg.ResyncInterval)
	defer resync.Stop()
	usage := time.NewTicker(r.cfg.UsageInterval)
	defer usage.Stop()
	hb := time.NewTicker(r.cfg.HeartbeatInterval)
	defer hb.Stop()
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	retry := time.NewTimer(0) // the first resync runs at once
	defer retry.Stop()
	var lastKick time.Time
	kickDelay := time.NewTimer(time.Hour)
	defer kickDelay.Stop()

	armExpiry := func() {
		r.mu.Lock()
		next := r.nextExpiry
		r.mu.Unlock()
		d := time.Hour
		if !next.IsZero() {
			d = max(next.Sub(r.now()), 0)
		}
		expiry.Reset(d)
	}
	// A failed resync is retried with jittered exponential backoff: soon
	// after a blip, but a fleet of nodes does not hammer a database that is
	// coming back from an outage in lockstep.
	retryBackoff := backoff.NewExponentialBackOff()
	retryBackoff.InitialInterval, retryBackoff.MaxInterval, retryBackoff.MaxElapsedTime = time.Second, min(r.cfg.ResyncInterval, time.Minute), 0
	doResync := func() {
		err := r.Resync(ctx)
		if err == nil {
			retryBackoff.Reset()
			return
		}
		if ctx.Err() == nil {
			d := retryBackoff.NextBackOff()
			r.log.Warn("resync failed; keeping the applied state", "err", err, "retry_in", d.Round(time.Millisecond).String())
			retry.Reset(d)
		}
	}
	doFlush := func() {
		lastKick = time.Now()
		if err := r.Flush(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("usage flush failed; counters keep the bytes", "err", err)
		}
	}
	for {
		armExpiry()
		select {
		case <-ctx.Done():
			return
		case <-r.rearm:
			// armExpiry at the top of the loop picks the new instant.
		case <-retry.C:
			doResync()
			if err := r.heartbeat(ctx, "online"); err != nil && ctx.Err() == nil {
				r.log.Warn("heartbeat", "err", err)
			}
		case <-resync.C:
			doResync()
		case <-expiry.C:
			if err := r.Converge(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("expiry", "err", err)
			}
		case <-usage.C:
			doFlush()
		case <-r.kick:
			// Leaving peers and status changes flush soon, at most 5 times a second.
			if wait := 200*time.Millisecond - time.Since(lastKick); wait > 0 {
				kickDelay.Reset(wait)
				continue
			}
			doFlush()
		case <-kickDelay.C:
			doFlush()
		case <-hb.C:
			if err := r.heartbeat(ctx, "online"); err != nil && ctx.Err() == nil {
				r.log.Warn("heartbeat", "err", err)
			}
		}
	}
}
