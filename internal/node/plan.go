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

// PlanReport is what Run would change now.
type PlanReport struct {
	Peers    reconcile.Plan
	Firewall []netctl.FirewallChange
}

// Plan reports what Run would change in the data plane now, changing
// nothing: the node's rows as the store serves them, decided as the
// reconciler decides them (quota from the committed usage), against the
// peers the interface holds, and the firewall Open would set up for the
// node's row and settings against the chains there. A missing interface
// holds nothing: every served row is an add.
func Plan(ctx context.Context, cfg Config) (PlanReport, error) {
	store, err := supabase.OpenStore(ctx, cfg.DatabaseURL, supabase.StoreOptions{MaxConns: 1})
	if err != nil {
		return PlanReport{}, fmt.Errorf("open store: %w", err)
	}
	defer store.Close()
	row, peers, err := store.Snapshot(ctx, cfg.NodeID)
	if err != nil {
		return PlanReport{}, err
	}
	quota, err := store.QuotaUsage(ctx, cfg.NodeID)
	if err != nil {
		return PlanReport{}, err
	}
	var self reconcile.Key
	var held []reconcile.PeerConfig
	ins, err := netctl.Inspect(ctx, cfg.Interface, cfg.Netns)
	switch {
	case errors.Is(err, netctl.ErrNoDevice):
	case err != nil:
		return PlanReport{}, err
	case ins.ShapingErr != nil:
		return PlanReport{}, fmt.Errorf("read installed limits: %w", ins.ShapingErr)
	default:
		self = reconcile.Key(ins.PublicKey)
		held = fromPeers(ins.Configs)
	}
	fw, err := netctl.PlanFirewall(ctx, linkConfig(cfg, row))
	if err != nil {
		return PlanReport{}, fmt.Errorf("read firewall: %w", err)
	}
	return PlanReport{Peers: reconcile.PlanPeers(row, self, peers, quota, time.Now(), held), Firewall: fw}, nil
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
