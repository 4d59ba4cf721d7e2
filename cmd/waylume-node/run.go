package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/reconcile"
	"github.com/waylume/waylume-node/supabase"
	"github.com/waylume/waylume-node/supabase/realtime"
)

var _ reconcile.Store = (*supabase.Store)(nil)

// readyGrace is how long the control plane may be unreachable before
// /readyz says so; the node keeps serving its last state meanwhile.
const readyGrace = 3 * time.Minute

// runNode wires the store, an event source, the data plane and the
// reconciler, and runs until ctx ends. Shutdown order: the sources stop
// (no more events), the reconciler flushes usage and marks the node
// offline, then the link is closed, leaving a kernel interface and its
// peers up unless cfg.TeardownOnExit.
func runNode(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry) error {
	mode, err := netctl.ParseMode(cfg.WGMode)
	if err != nil {
		return err
	}
	key, err := netctl.LoadOrCreateKey(cfg.PrivateKeyFile)
	if err != nil {
		return err
	}
	store, err := supabase.OpenStore(ctx, cfg.DatabaseURL, supabase.StoreOptions{})
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer store.Close()

	// The interface needs the node's address: wait for the row.
	node, err := waitNode(ctx, store, cfg.NodeID, log)
	if err != nil {
		return err
	}
	base := netctl.Config{
		Interface: cfg.Interface, Mode: mode, PrivateKey: key,
		ListenPort: node.ListenPort, Address: node.Address, Address6: node.Address6, MTU: node.MTU,
		EgressInterface: cfg.EgressInterface, Isolation: cfg.Isolation,
	}
	link, err := netctl.Open(ctx, base, log)
	if err != nil {
		return fmt.Errorf("open %s: %w", cfg.Interface, err)
	}
	defer func() {
		if cfg.TeardownOnExit {
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			if err := link.Teardown(tctx); err != nil {
				log.Warn("teardown", "err", err)
			}
			cancel()
		}
		if err := link.Close(); err != nil {
			log.Warn("close link", "err", err)
		}
	}()

	rec, err := reconcile.New(reconcile.Config{
		NodeID: cfg.NodeID, Store: store, DataPlane: newLinkPlane(link, base), Log: log, Registerer: reg,
		ResyncInterval: cfg.ResyncInterval, UsageInterval: cfg.UsageInterval,
		PublicKey: link.PublicKey().String(), Version: version,
	})
	if err != nil {
		return err
	}
	cfg.Health.SetReadiness(func() error { return rec.Ready(readyGrace) })
	defer cfg.Health.SetReadiness(nil)

	// Sources get their own context so they stop before the reconciler's
	// final flush: no event is taken after shutdown starts.
	srcCtx, stopSources := context.WithCancel(ctx)
	defer stopSources()
	var wg sync.WaitGroup
	runSource, err := eventSource(cfg, rec.Sink(), reg, log)
	if err != nil {
		return err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := runSource(srcCtx); err != nil && srcCtx.Err() == nil {
			log.Error("event source stopped", "err", err)
		}
	}()

	log.Info("node running", "public_key", link.PublicKey().String(), "address", node.Address, "userspace", link.Userspace())
	runErr := rec.Run(ctx) // returns after ctx ends, with usage flushed and the node marked offline
	stopSources()
	wg.Wait()
	return runErr
}

// eventSource picks Realtime when configured, else LISTEN/NOTIFY.
func eventSource(cfg Config, sink events.Sink, reg prometheus.Registerer, log *slog.Logger) (func(context.Context) error, error) {
	if cfg.RealtimeURL == "" {
		return func(ctx context.Context) error {
			return supabase.Listen(ctx, cfg.DatabaseURL, cfg.NodeID, sink, log)
		}, nil
	}
	connected := prometheus.NewGauge(prometheus.GaugeOpts{Name: "waylume_realtime_connected", Help: "1 while the Realtime subscription is live."})
	reconnects := prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_realtime_reconnects_total", Help: "Realtime sessions started after the first."})
	for _, c := range []prometheus.Collector{connected, reconnects} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	sessions := 0
	rt, err := realtime.New(realtime.Config{
		URL: cfg.RealtimeURL, APIKey: cfg.SupabaseKey, AccessToken: cfg.AccessToken, NodeID: cfg.NodeID, Logger: log,
		OnState: func(s realtime.State) {
			if s.Phase == realtime.Live {
				connected.Set(1)
			} else {
				connected.Set(0)
			}
			if s.Sessions > sessions {
				if sessions > 0 {
					reconnects.Add(float64(s.Sessions - sessions))
				}
				sessions = s.Sessions
			}
		},
	}, sink)
	if err != nil {
		return nil, fmt.Errorf("realtime: %w", err)
	}
	cfg.Token.OnChange(rt.SetAccessToken)
	return rt.Run, nil
}

// waitNode reads the node's row, retrying while the database is
// unreachable; a missing row is an error.
func waitNode(ctx context.Context, store *supabase.Store, nodeID string, log *slog.Logger) (events.Node, error) {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = 500*time.Millisecond, 15*time.Second, 0
	for {
		n, err := store.Node(ctx, nodeID)
		if err == nil {
			return n, nil
		}
		if errors.Is(err, supabase.ErrNotFound) {
			return events.Node{}, fmt.Errorf("node %s: no such row in waylume.nodes (or not visible to this login)", nodeID)
		}
		d := b.NextBackOff()
		log.Warn("cannot read the node's row; retrying", "err", err, "retry_in", d)
		select {
		case <-ctx.Done():
			return events.Node{}, ctx.Err()
		case <-time.After(d):
		}
	}
}
