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
		return func(ctx context.Context) error {
			return supabase.Listen(ctx, cfg.DatabaseURL, cfg.NodeID, sink, n.log)
		}, nil
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
