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
	rcfg := realtime.Config{
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
