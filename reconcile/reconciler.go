package reconcile

// Locking: one mutex (Reconciler.mu) guards all state below it. Event
// batches, resyncs, the expiry timer and retries of failed rows take it for
// their whole run, data plane and store calls included. Usage flushes are
// serialised by flushMu and take mu for everything but the database write
// (usage.go says why that is safe). Store and data plane calls have their
// own timeouts so a hung database or device cannot hold mu forever.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/retry"
)

// Config wires a Reconciler.
type Config struct {
	NodeID    string
	Store     Store
	DataPlane DataPlane
	Log       *slog.Logger
	// Registerer receives the metrics; nil: not registered.
	Registerer prometheus.Registerer
	// Now is the clock; nil: time.Now.
	Now func() time.Time

	ResyncInterval    time.Duration // full resync; default 60s
	UsageInterval     time.Duration // usage flush; default 60s
	HeartbeatInterval time.Duration // default 30s
	// An idle peer (its counters moved less than IdleBytes since their
	// last commit, e.g. keepalives only) has its counters and handshake
	// written every IdleInterval instead of every flush. Defaults: five
	// usage intervals, at most 5m, and 64 KiB; IdleBytes 1 writes every
	// peer with traffic at every flush.
	IdleInterval time.Duration
	IdleBytes    int64

	StoreTimeout     time.Duration // per store call; default 10s
	DataPlaneTimeout time.Duration // per data plane call; default 30s
	// EventResyncInterval is the least time between two snapshots that
	// events ask for (a source's Resync, or more rows to read than one
	// batch reads singly); default 5s, at most ResyncInterval.
	EventResyncInterval time.Duration

	PublicKey string // written in the heartbeat
	Version   string

	// SaveLocal, when set, keeps the state Restore takes (local.go); it is
	// called at most once every SaveInterval (default 5s) and at shutdown.
	SaveLocal    func(*LocalState) error
	SaveInterval time.Duration

	// AfterBulk, when set, is called after each resync, usage flush and
	// local state save, failed or not: the periodic work that allocates
	// megabytes at 10,000 peers, all of it garbage once the work returns.
	// The node returns that memory to the OS then (internal/trim).
	AfterBulk func()
}

// rowRetry is the backoff of a row whose apply failed: soon after a blip,
// but a peer the device keeps refusing is not retried at every event.
var rowRetry = retry.Policy{Initial: time.Second, Max: 5 * time.Minute}

// Reconciler keeps the data plane equal to the node's rows.
type Reconciler struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	queue *events.Queue
	m     *metrics
	kick  chan struct{} // capacity 1: flush soon (a peer is leaving, a status changed)
	rearm chan struct{} // capacity 1: the next expiry or row retry changed
	self  Key           // the node's public key, which no peer row may use

	// Local state (local.go): save asks for a save; serving is
	// waylume_local_state_serving.
	save    chan struct{}
	serving prometheus.Gauge

	flushMu sync.Mutex // one usage flush at a time; taken before mu

	mu         sync.Mutex
	loaded     bool // status rows (baselines) loaded
	local      bool // serving a saved state: Restore until the first resync
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
	// lastEventResync is when events last asked for a snapshot that ran.
	lastEventResync time.Time

	// For the partial path: what each row claims (raw key, addresses),
	// the rows changed since the last converge, the last decisions, and
	// which peer holds each key on the device.
	byKey     map[string][]string // usually one id: a slice is far smaller than a map
	byAddr    map[netip.Addr][]string
	dirty     map[string]bool
	waiting   map[string]bool // rows whose action waits for the reconciler itself (a key still leaving, a zero baseline)
	decideAll bool
	lastDec   map[string]decision
	held      map[Key]*peerState

	// Rows whose apply failed, each retried on its own backoff.
	failing   *retry.Keyed[string]
	nextRetry time.Time // failing's earliest due instant, as the timer loop was told
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
	refused bool // the data plane refused the config (converge.go): state and reason say why
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
	countedAt    int64 // unix nanoseconds of the flush that committed com's counters
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
	cfg.ResyncInterval = orDefault(cfg.ResyncInterval, 60*time.Second)
	cfg.UsageInterval = orDefault(cfg.UsageInterval, 60*time.Second)
	cfg.HeartbeatInterval = orDefault(cfg.HeartbeatInterval, 30*time.Second)
	cfg.IdleInterval = orDefault(cfg.IdleInterval, min(5*cfg.UsageInterval, 5*time.Minute))
	if cfg.IdleBytes <= 0 {
		cfg.IdleBytes = 64 << 10
	}
	cfg.StoreTimeout = orDefault(cfg.StoreTimeout, 10*time.Second)
	cfg.DataPlaneTimeout = orDefault(cfg.DataPlaneTimeout, 30*time.Second)
	cfg.SaveInterval = orDefault(cfg.SaveInterval, defaultSaveInterval)
	cfg.EventResyncInterval = orDefault(cfg.EventResyncInterval, min(5*time.Second, cfg.ResyncInterval))
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
	serving, err := newServingGauge(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	r := &Reconciler{
		cfg: cfg, log: cfg.Log, now: cfg.Now, m: m, serving: serving, self: self,
		kick:  make(chan struct{}, 1),
		rearm: make(chan struct{}, 1),
		save:  make(chan struct{}, 1),
		rows:  map[string]events.Peer{},
		peers: map[string]*peerState{},
		byKey: map[string][]string{}, byAddr: map[netip.Addr][]string{},
		dirty: map[string]bool{}, waiting: map[string]bool{}, held: map[Key]*peerState{},
		failing: retry.NewKeyed[string](rowRetry),
	}
	r.queue = events.NewQueue(events.QueueOptions{MaxBatch: 4096, OnCoalesce: func(n int) { m.coalesced.Add(float64(n)) }})
	return r, nil
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

// planeCtx bounds one data plane call: they run under mu, and a device
// that hangs must not stall events, flushes and readiness with it.
func (r *Reconciler) planeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.DataPlaneTimeout)
}

// stats reads the data plane's counters within DataPlaneTimeout.
func (r *Reconciler) stats(ctx context.Context) ([]PeerStats, error) {
	pctx, cancel := r.planeCtx(ctx)
	defer cancel()
	return r.cfg.DataPlane.Stats(pctx)
}

func (r *Reconciler) peer(id string) *peerState {
	ps := r.peers[id]
	if ps == nil {
		ps = &peerState{id: id}
		r.peers[id] = ps
	}
	return ps
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

func (r *Reconciler) kickFlush() { poke(r.kick) }

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
