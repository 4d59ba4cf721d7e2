package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/reconcile"
	"github.com/waylume/waylume-node/supabase"
)

// Plan reports what Run would change in the data plane now, changing
// nothing: the node's rows as the store serves them, decided as the
// reconciler decides them (quota from the committed usage), against the
// peers the interface holds. A missing interface holds nothing: every
// served row is an add. It reads only cfg's DatabaseURL, NodeID,
// Interface and Netns.
func Plan(ctx context.Context, cfg Config) (reconcile.Plan, error) {
	store, err := supabase.OpenStore(ctx, cfg.DatabaseURL, supabase.StoreOptions{MaxConns: 1})
	if err != nil {
		return reconcile.Plan{}, fmt.Errorf("open store: %w", err)
	}
	defer store.Close()
	row, peers, err := store.Snapshot(ctx, cfg.NodeID)
	if err != nil {
		return reconcile.Plan{}, err
	}
	quota, err := store.QuotaUsage(ctx, cfg.NodeID)
	if err != nil {
		return reconcile.Plan{}, err
	}
	var self reconcile.Key
	var held []reconcile.PeerConfig
	ins, err := netctl.Inspect(ctx, cfg.Interface, cfg.Netns)
	switch {
	case errors.Is(err, netctl.ErrNoDevice):
	case err != nil:
		return reconcile.Plan{}, err
	case ins.ShapingErr != nil:
		return reconcile.Plan{}, fmt.Errorf("read installed limits: %w", ins.ShapingErr)
	default:
		self = reconcile.Key(ins.PublicKey)
		held = fromPeers(ins.Configs)
	}
	return reconcile.PlanPeers(row, self, peers, quota, time.Now(), held), nil
}

func fromPeers(ps []netctl.Peer) []reconcile.PeerConfig {
	out := make([]reconcile.PeerConfig, len(ps))
	for i, p := range ps {
		out[i] = reconcile.PeerConfig{
			PublicKey: reconcile.Key(p.PublicKey), PresharedKey: reconcile.Key(p.PresharedKey),
			AllowedIPs: p.AllowedIPs, Keepalive: p.Keepalive,
			DownloadKbps: p.DownloadKbps, UploadKbps: p.UploadKbps,
		}
	}
	return out
}
