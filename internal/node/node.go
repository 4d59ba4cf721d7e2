package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/retry"
	"github.com/waylume/waylume-node/internal/statefile"
	"github.com/waylume/waylume-node/internal/trim"
	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/reconcile"
	"github.com/waylume/waylume-node/supabase"
	"github.com/waylume/waylume-node/supabase/realtime"
)

// ReadyGrace is how long the control plane may be unreachable before
// /readyz says so; the node keeps serving its last state meanwhile.
const ReadyGrace = 3 * time.Minute

// Config is what a node needs to run; cmd/waylume-node fills it from
// flags and the environment and has validated it.
type Config struct {
	DatabaseURL string
	NodeID      string
	// RealtimeURL selects Realtime as the event source; empty: LISTEN/NOTIFY
	// on the database connection.
	RealtimeURL string
	// RealtimeMode is realtime.ModeBroadcast (empty: the default) or
	// realtime.ModePostgresChanges.
	RealtimeMode string
	SupabaseKey  string // Realtime apikey; a secret
	AccessToken  string // Realtime JWT; a secret

	Interface       string
	WGMode          string // "auto", "kernel" or "userspace"
	PrivateKeyFile  string
	EgressInterface string // empty: from the default route
	Isolation       bool   // client-to-client traffic blocked
	TeardownOnExit  bool   // remove interface, tc and chains on exit
	// The firewall's exceptions to "clients reach the internet only"; see
	// netctl.Config.
	AllowPrivate  []netip.Prefix
	AllowLocal    []netctl.Service
	RoutedSubnets []netip.Prefix
	// StateDir keeps the last known desired state, to start from when the
	// database is unreachable at start; empty: none is kept.
	StateDir string
	// Netns runs the data plane in the network namespace at this path
	// (tests); empty: the process's own.
	Netns string
	// DeviceCommand runs a userspace device in its own process; see
	// netctl.Config.DeviceCommand. Empty: in this process.
	DeviceCommand []string

	ResyncInterval time.Duration
	UsageInterval  time.Duration
	Version        string // written in the heartbeat
	// ReturnMemory hands the heap's free memory back to the OS after each
	// resync, flush and save (memory.go). It is process-wide, for the run
	// command: a test binary running nodes keeps the runtime's own pacing.
	ReturnMemory bool
}

// Runtime is what the running node reports to and hears from; none of it
// is a setting. Zero values are fine: no metrics, no readiness, no token
// changes.
type Runtime struct {
	Log        *slog.Logger
	Registerer prometheus.Registerer
	// Health receives the readiness check once the data plane is up.
	Health Health
	// Tokens is the Realtime access token while running (an Auth session
	// or a token file); nil: Config.AccessToken, fixed.
	Tokens TokenSource
	// Observe, when set, sees what the node does (tests and benchmarks).
	Observe Observer
}

// Health is where the node reports readiness; cmd's /readyz reads it.
type Health interface {
	SetReadiness(func() error)
}

// TokenSource is the node's Realtime identity. Token waits for the first
// token (an Auth sign-in may take a while); OnChange gets every later one,
// which the node pushes to its live channel without a rejoin.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
	OnChange(f func(token string))
}

// Observer sees events as sources deliver them and peers as the data plane
// takes them. Either field may be nil.
type Observer struct {
	Event   func(events.Event)
	Applied func(key reconcile.Key, at time.Time)
}

// Node is an opened node: store, link and reconciler, not yet running.
type Node struct {
	cfg   Config
	rt    Runtime
	log   *slog.Logger
	store *supabase.Store
	link  *netctl.Link
	plane *linkPlane
	rec   *reconcile.Reconciler
	state *statefile.File // nil: no local state kept
	trim  *trim.Trimmer   // nil: Config.ReturnMemory off
	// refused is the Realtime refusal /readyz reports, nil when none.
	refused atomic.Pointer[realtime.Error]
}

var _ reconcile.Store = (*supabase.Store)(nil)

// Run opens the node, runs it until ctx ends and closes it.
func Run(ctx context.Context, cfg Config, rt Runtime) error {
	n, err := Open(ctx, cfg, rt)
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Run(ctx)
}

// Open connects to the store, waits for the node's row and opens the link
// with its address. With Config.StateDir holding a saved state and the
// database unreachable for 5s, it opens the link from the saved node row
// and serves the saved state until the database answers.
func Open(ctx context.Context, cfg Config, rt Runtime) (_ *Node, err error) {
	if rt.Log == nil {
		rt.Log = slog.New(slog.DiscardHandler)
	}
	if rt.Registerer == nil {
		rt.Registerer = prometheus.NewRegistry()
	}
	n := &Node{cfg: cfg, rt: rt, log: rt.Log}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	mode, err := netctl.ParseMode(cfg.WGMode)
	if err != nil {
		return nil, err
	}
	key, err := netctl.LoadOrCreateKey(cfg.PrivateKeyFile)
	if err != nil {
		return nil, err
	}
	if cfg.StateDir != "" {
		n.state = statefile.New(cfg.StateDir, stateFile)
	}
	// With a saved state to fall back on, a database down at start is
	// not an error: the pool connects when it can.
	lazy := n.state != nil && exists(n.state.Path())
	if n.store, err = supabase.OpenStore(ctx, cfg.DatabaseURL, supabase.StoreOptions{Lazy: lazy}); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	row, saved, err := n.nodeRow(ctx, lazy)
	if err != nil {
		return nil, err
	}
	base := linkConfig(cfg, row)
	base.Mode, base.PrivateKey = mode, key
	if n.link, err = netctl.Open(ctx, base, n.log); err != nil {
		return nil, fmt.Errorf("open %s: %w", cfg.Interface, err)
	}
	n.plane = newLinkPlane(n.link, base, rt.Observe.Applied)
	rc := reconcile.Config{
		NodeID: cfg.NodeID, Store: n.store, DataPlane: n.plane, Log: n.log, Registerer: rt.Registerer,
		ResyncInterval: cfg.ResyncInterval, UsageInterval: cfg.UsageInterval,
		PublicKey: n.link.PublicKey().String(), Version: cfg.Version,
	}
	if n.state != nil {
		rc.SaveLocal = func(s *reconcile.LocalState) error {
			return n.state.Write(cfg.NodeID, reconcile.LocalStateVersion, s)
		}
	}
	if cfg.ReturnMemory {
		n.trim = newTrimmer()
		rc.AfterBulk = n.trim.Poke
	}
	if n.rec, err = reconcile.New(rc); err != nil {
		return nil, err
	}
	if saved != nil {
		n.restore(ctx, saved)
	}
	return n, nil
}

// Run starts the event source and the reconciler and returns after ctx
// ends, with usage flushed and the node marked offline.
func (n *Node) Run(ctx context.Context) error {
	if n.rt.Health != nil {
		n.rt.Health.SetReadiness(n.ready)
		defer n.rt.Health.SetReadiness(nil)
	}
	sink := n.rec.Sink()
	if f := n.rt.Observe.Event; f != nil {
		inner := sink
		sink = events.SinkFunc(func(e events.Event) { f(e); inner.Add(e) })
	}
	runSource, err := n.source(sink)
	if err != nil {
		return err
	}
	// Sources get their own context so they stop before the reconciler's
	// final flush.
	srcCtx, stopSources := context.WithCancel(ctx)
	defer stopSources()
	var wg sync.WaitGroup
	if n.trim != nil {
		wg.Go(func() { n.trim.Run(srcCtx) })
	}
	wg.Go(func() {
		if err := runSource(srcCtx); err != nil && srcCtx.Err() == nil {
			n.log.Error("event source stopped", "err", err)
		}
	})
	n.log.Info("node running", "public_key", n.link.PublicKey().String(), "userspace", n.link.Userspace())
	runCtx, lost := n.whileDevice(ctx)
	runErr := n.rec.Run(runCtx)
	stopSources()
	wg.Wait()
	if err := lost(); err != nil {
		return err
	}
	return runErr
}

// whileDevice is ctx, ended early if the device process dies: its
// interface and every peer went with it, and a restart (the supervisor's,
// from the saved state if need be) is the way back. lost reports that
// cause once the run is over.
func (n *Node) whileDevice(ctx context.Context) (_ context.Context, lost func() error) {
	ch := n.link.DeviceLost()
	if ch == nil {
		return ctx, func() error { return nil }
	}
	ctx, cancel := context.WithCancel(ctx)
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case err = <-ch:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, func() error {
		cancel()
		<-done
		return err
	}
}

// ready is /readyz: the reconciler's verdict, then a Realtime refusal
// that retrying cannot fix (the node still serves and resyncs, but hears
// no changes until the cause is fixed).
func (n *Node) ready() error {
	if err := n.rec.Ready(ReadyGrace); err != nil {
		return err
	}
	if e := n.refused.Load(); e != nil {
		return fmt.Errorf("realtime refused: %s", e.Reason)
	}
	return nil
}

// Close closes the link (tearing it down first with
// Config.TeardownOnExit) and the store.
func (n *Node) Close() {
	if n.link != nil {
		if n.cfg.TeardownOnExit {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := n.link.Teardown(ctx); err != nil {
				n.log.Warn("teardown", "err", err)
			}
			cancel()
		}
		if err := n.link.Close(); err != nil {
			n.log.Warn("close link", "err", err)
		}
		n.link = nil
	}
	if n.store != nil {
		n.store.Close()
		n.store = nil
	}
}

// Reconciler, Store and DataPlane give tests and benchmarks the parts.
func (n *Node) Reconciler() *reconcile.Reconciler { return n.rec }
func (n *Node) Store() *supabase.Store            { return n.store }
func (n *Node) DataPlane() reconcile.DataPlane    { return n.plane }

// waitNode reads the node's row, retrying while the database is
// unreachable; a missing row is an error.
func waitNode(ctx context.Context, store *supabase.Store, nodeID string, log *slog.Logger) (events.Node, error) {
	b := retry.Policy{Initial: 500 * time.Millisecond, Max: 15 * time.Second}.New()
	for {
		row, err := store.Node(ctx, nodeID)
		if err == nil {
			return row, nil
		}
		if errors.Is(err, events.ErrNotFound) {
			return events.Node{}, fmt.Errorf("node %s: no such row in waylume.nodes (or not visible to this login)", nodeID)
		}
		d := b.Next()
		log.Warn("cannot read the node's row; retrying", "err", err, "retry_in", d)
		if !retry.Sleep(ctx, d) {
			return events.Node{}, ctx.Err()
		}
	}
}

// linkConfig is the interface's configuration from the node's settings
// and row, without its mode and key.
func linkConfig(cfg Config, row events.Node) netctl.Config {
	return netctl.Config{
		Interface: cfg.Interface, Netns: cfg.Netns, DeviceCommand: cfg.DeviceCommand,
		ListenPort: row.ListenPort, Address: row.Address, Address6: row.Address6, MTU: row.MTU,
		EgressInterface: cfg.EgressInterface, Isolation: cfg.Isolation,
		AllowPrivate: cfg.AllowPrivate, AllowLocal: cfg.AllowLocal, RoutedSubnets: cfg.RoutedSubnets,
	}
}
