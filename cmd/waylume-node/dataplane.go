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

// UpdatePeers adds or changes exactly peers.
func (p *linkPlane) UpdatePeers(ctx context.Context, peers []reconcile.PeerConfig) (map[reconcile.Key]error, error) {
	failed, err := p.link.UpdatePeers(ctx, linkPeers(peers), nil)
	return planeKeys(failed), err
}

// SyncPeers makes the device hold exactly all.
func (p *linkPlane) SyncPeers(ctx context.Context, all []reconcile.PeerConfig) (map[reconcile.Key]error, error) {
	failed, err := p.link.SyncPeers(ctx, linkPeers(all))
	return planeKeys(failed), err
}

// RemovePeers removes the peers with these keys.
func (p *linkPlane) RemovePeers(ctx context.Context, keys []reconcile.Key) (map[reconcile.Key]error, error) {
	rm := make([]wgtypes.Key, len(keys))
	for i, k := range keys {
		rm[i] = wgtypes.Key(k)
	}
	failed, err := p.link.UpdatePeers(ctx, nil, rm)
	return planeKeys(failed), err
}

func linkPeers(cs []reconcile.PeerConfig) []netctl.Peer {
	peers := make([]netctl.Peer, len(cs))
	for i, c := range cs {
		peers[i] = netctl.Peer{
			PublicKey: wgtypes.Key(c.PublicKey), PresharedKey: wgtypes.Key(c.PresharedKey),
			AllowedIPs: c.AllowedIPs, Keepalive: c.Keepalive,
			DownloadKbps: c.DownloadKbps, UploadKbps: c.UploadKbps,
		}
	}
	return peers
}

func planeKeys(failed map[wgtypes.Key]error) map[reconcile.Key]error {
	out := make(map[reconcile.Key]error, len(failed))
	for k, e := range failed {
		out[reconcile.Key(k)] = e
	}
	return out
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
