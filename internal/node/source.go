package node

import (
	"context"
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
	connected := prometheus.NewGauge(prometheus.GaugeOpts{Name: "waylume_realtime_connected", Help: "1 while the Realtime subscription is live."})
	reconnects := prometheus.NewCounter(prometheus.CounterOpts{Name: "waylume_realtime_reconnects_total", Help: "Realtime sessions started after the first."})
	for _, c := range []prometheus.Collector{connected, reconnects} {
		if err := n.rt.Registerer.Register(c); err != nil {
			return nil, err
		}
	}
	sessions := 0
	client, err := realtime.New(realtime.Config{
		URL: cfg.RealtimeURL, APIKey: cfg.SupabaseKey, AccessToken: cfg.AccessToken, NodeID: cfg.NodeID, Logger: n.log,
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
	if n.rt.Tokens != nil {
		n.rt.Tokens.OnChange(client.SetAccessToken)
	}
	return client.Run, nil
}
