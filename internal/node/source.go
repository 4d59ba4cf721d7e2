package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/supabase"
	"github.com/waylume/waylume-node/supabase/realtime"
)

// source picks Realtime when configured, else LISTEN/NOTIFY.
func (n *Node) source(sink events.Sink) (func(context.Context) error, error) {
	cfg := n.cfg
	if cfg.RealtimeURL == "" {
		dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_listen_dropped_total",
			Help: "Notifications on the node's channel dropped as junk (not the waylume triggers' payload)."})
		if err := n.rt.Registerer.Register(dropped); err != nil {
			return nil, err
		}
		lc := supabase.ListenConfig{URL: cfg.DatabaseURL, NodeID: cfg.NodeID, Log: n.log, Dropped: dropped.Inc}
		return func(ctx context.Context) error { return supabase.Listen(ctx, lc, sink) }, nil
	}
	m, err := newRealtimeMetrics(n.rt.Registerer)
	if err != nil {
		return nil, err
	}
	rcfg := realtime.Config{
		URL: cfg.RealtimeURL, APIKey: cfg.SupabaseKey, AccessToken: cfg.AccessToken, NodeID: cfg.NodeID,
		Mode: cfg.RealtimeMode, Logger: n.log,
		// The canary goes through the node's own store: the same
		// credentials and RLS as every other write.
		Canary: func(ctx context.Context, nonce string) error {
			return n.store.WriteCanary(ctx, cfg.NodeID, nonce)
		},
		OnState: func(s realtime.State) {
			m.observe(s)
			if s.Phase == realtime.Live {
				n.refused.Store(nil)
			} else if s.Refused != nil {
				n.refused.Store(s.Refused)
			}
		},
	}
	// Built now so a bad setting fails Run at once; with a token source
	// the client is built again once the first token is there.
	client, err := realtime.New(rcfg, sink)
	if err != nil {
		return nil, fmt.Errorf("realtime: %w", err)
	}
	if n.rt.Tokens == nil {
		return client.Run, nil
	}
	return func(ctx context.Context) error { return n.runRealtime(ctx, rcfg, sink) }, nil
}

// runRealtime waits for the first access token, then runs the client with
// every later token pushed to it. Peers are served meanwhile: the
// reconciler runs from the database alone until events flow.
func (n *Node) runRealtime(ctx context.Context, rcfg realtime.Config, sink events.Sink) error {
	tok, err := n.rt.Tokens.Token(ctx)
	if err != nil {
		return err
	}
	rcfg.AccessToken = tok
	client, err := realtime.New(rcfg, sink)
	if err != nil {
		return fmt.Errorf("realtime: %w", err)
	}
	n.rt.Tokens.OnChange(client.SetAccessToken)
	// A token issued between the first read and OnChange would be missed.
	if now, err := n.rt.Tokens.Token(ctx); err == nil && now != tok {
		client.SetAccessToken(now)
	}
	return client.Run(ctx)
}

// realtimeMetrics are the Realtime client's series (docs/contract.md,
// "Metrics"); observe runs on the client's goroutine only.
type realtimeMetrics struct {
	connected, refused prometheus.Gauge
	reconnects, deaf   prometheus.Counter
	sessions           int
}

func newRealtimeMetrics(reg prometheus.Registerer) (*realtimeMetrics, error) {
	m := &realtimeMetrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "waylume_realtime_connected",
			Help: "1 while the Realtime subscription is live."}),
		refused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "waylume_realtime_refused",
			Help: "1 while Realtime refuses the node for a reason retrying cannot fix (token, policy, private-only project)."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_realtime_reconnects_total",
			Help: "Realtime sessions started after the first."}),
		deaf: prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_realtime_deaf_total",
			Help: "Realtime sessions ended because the node's canary did not come back."}),
	}
	for _, c := range []prometheus.Collector{m.connected, m.refused, m.reconnects, m.deaf} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *realtimeMetrics) observe(s realtime.State) {
	live, refused := 0.0, 0.0
	if s.Phase == realtime.Live {
		live = 1
	}
	if s.Refused != nil {
		refused = 1
	}
	m.connected.Set(live)
	if s.Phase == realtime.Live || s.Phase == realtime.Disconnected && s.Retry > 0 {
		m.refused.Set(refused)
	}
	if s.Phase == realtime.Disconnected && errors.Is(s.Err, realtime.ErrDeaf) && s.Retry > 0 {
		m.deaf.Inc()
	}
	if s.Sessions > m.sessions {
		if m.sessions > 0 {
			m.reconnects.Add(float64(s.Sessions - m.sessions))
		}
		m.sessions = s.Sessions
	}
}
