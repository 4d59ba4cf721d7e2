package main

import (
	"context"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/reconcile"
)

// linkPlane adapts *netctl.Link to reconcile.DataPlane. The node-level
// settings that do not come from the node's row (interface, mode, key,
// egress, isolation) stay as run opened the link with.
type linkPlane struct {
	link *netctl.Link

	mu   sync.Mutex
	base netctl.Config
}

var _ reconcile.DataPlane = (*linkPlane)(nil)

func newLinkPlane(link *netctl.Link, base netctl.Config) *linkPlane {
	return &linkPlane{link: link, base: base}
}

func (p *linkPlane) Configure(ctx context.Context, n reconcile.NodeConfig) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	cfg := p.base
	cfg.Address, cfg.Address6, cfg.ListenPort, cfg.MTU = n.Address, n.Address6, n.ListenPort, n.MTU
	// DNS is for clients' configs; the node itself has nothing to apply.
	if err := p.link.Reconfigure(ctx, cfg); err != nil {
		return err
	}
	p.base = cfg
	return nil
}

func (p *linkPlane) ApplyPeers(ctx context.Context, set []reconcile.PeerConfig, remove []reconcile.Key, full bool) (map[reconcile.Key]error, error) {
	peers := make([]netctl.Peer, len(set))
	for i, c := range set {
		peers[i] = netctl.Peer{
			PublicKey: wgtypes.Key(c.PublicKey), PresharedKey: wgtypes.Key(c.PresharedKey),
			AllowedIPs: c.AllowedIPs, Keepalive: c.Keepalive,
			DownloadKbps: c.DownloadKbps, UploadKbps: c.UploadKbps,
		}
	}
	var failed map[wgtypes.Key]error
	var err error
	if full {
		// SyncPeers removes whatever is not in set; remove is implied.
		failed, err = p.link.SyncPeers(ctx, peers)
	} else {
		rm := make([]wgtypes.Key, len(remove))
		for i, k := range remove {
			rm[i] = wgtypes.Key(k)
		}
		failed, err = p.link.UpdatePeers(ctx, peers, rm)
	}
	out := make(map[reconcile.Key]error, len(failed))
	for k, e := range failed {
		out[reconcile.Key(k)] = e
	}
	return out, err
}

func (p *linkPlane) Stats(ctx context.Context) ([]reconcile.PeerStats, error) {
	st, err := p.link.Stats(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]reconcile.PeerStats, len(st))
	for i, s := range st {
		out[i] = reconcile.PeerStats{PublicKey: reconcile.Key(s.PublicKey), Endpoint: s.Endpoint,
			LastHandshake: s.LastHandshake, RxBytes: s.RxBytes, TxBytes: s.TxBytes}
	}
	return out, nil
}

func (p *linkPlane) Epoch() string { return p.link.Epoch() }
