package netctl

import (
	"context"
	"fmt"
	"net/netip"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Stats reads every peer's endpoint, last handshake and byte counters from
// the device in one call (one netlink dump or one UAPI get), and the
// installed limits from the shaping mirror, so it stays cheap at 10,000
// peers. The read also refreshes the peer mirror SyncPeers diffs against.
func (l *Link) Stats(ctx context.Context) ([]PeerStats, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	dev, err := l.wg.Device(l.cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("read device %s: %w", l.cfg.Interface, err)
	}
	l.mirror(dev) // a free refresh: SyncPeers then need not read again
	return peerStats(dev, l.tc.classes), nil
}

// peerStats is the device's peers with the limits classes holds for their
// shaping addresses.
func peerStats(dev *wgtypes.Device, classes map[netip.Addr]limits) []PeerStats {
	// One backing array for every peer's allowed IPs: 10,000 peers are
	// one allocation, not 10,000.
	n := 0
	for i := range dev.Peers {
		n += len(dev.Peers[i].AllowedIPs)
	}
	ips := make([]netip.Prefix, 0, n)
	out := make([]PeerStats, 0, len(dev.Peers))
	for i := range dev.Peers {
		p := &dev.Peers[i]
		s := PeerStats{
			PublicKey:     p.PublicKey,
			LastHandshake: p.LastHandshakeTime,
			RxBytes:       p.ReceiveBytes,
			TxBytes:       p.TransmitBytes,
		}
		if p.Endpoint != nil {
			s.Endpoint = p.Endpoint.AddrPort()
			s.Endpoint = netip.AddrPortFrom(s.Endpoint.Addr().Unmap(), s.Endpoint.Port())
		}
		if len(p.AllowedIPs) > 0 {
			start := len(ips)
			for j := range p.AllowedIPs {
				ips = append(ips, ipNetPrefix(&p.AllowedIPs[j]))
			}
			s.AllowedIPs = ips[start:len(ips):len(ips)]
		}
		if a, ok := shapingAddr(p.AllowedIPs); ok {
			lim := classes[a]
			s.DownloadKbps, s.UploadKbps = lim.down, lim.up
		}
		out = append(out, s)
	}
	return out
}
