package reconcile

import (
	"context"
	"encoding/base64"
	"net/netip"
	"slices"
	"time"
)

// Key is a WireGuard public or preshared key.
type Key [32]byte

// String is the base64 form. Never call it on a preshared key in a log.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is all zeros (no key).
func (k Key) IsZero() bool { return k == Key{} }

// PeerConfig is one WireGuard peer as the data plane should hold it.
// Applying the same PeerConfig twice must be a no-op.
type PeerConfig struct {
	PublicKey    Key
	PresharedKey Key            // zero: none
	AllowedIPs   []netip.Prefix // empty: cut (no traffic to or from the peer is routed)
	Keepalive    time.Duration
	DownloadKbps int64 // node -> client, 0: unlimited
	UploadKbps   int64 // client -> node, 0: unlimited
}

// Equal reports whether two configs would program the same peer.
func (p PeerConfig) Equal(o PeerConfig) bool {
	return p.PublicKey == o.PublicKey && p.PresharedKey == o.PresharedKey &&
		slices.Equal(p.AllowedIPs, o.AllowedIPs) && p.Keepalive == o.Keepalive &&
		p.DownloadKbps == o.DownloadKbps && p.UploadKbps == o.UploadKbps
}

// cut is the config of a peer whose traffic is stopped but whose counters
// must be read once more before it is removed.
func cut(k Key) PeerConfig { return PeerConfig{PublicKey: k} }

// NodeConfig is the part of the node's row the data plane applies.
type NodeConfig struct {
	Address    netip.Prefix
	Address6   netip.Prefix
	ListenPort int
	MTU        int
	DNS        []netip.Addr
}

// Equal reports whether two node configs are the same.
func (n NodeConfig) Equal(o NodeConfig) bool {
	return n.Address == o.Address && n.Address6 == o.Address6 && n.ListenPort == o.ListenPort &&
		n.MTU == o.MTU && slices.Equal(n.DNS, o.DNS)
}

// PeerStats is one peer's counters as the data plane reports them. RxBytes
// is what the node received from the client (the client's upload).
type PeerStats struct {
	PublicKey     Key
	Endpoint      netip.AddrPort
	LastHandshake time.Time
	RxBytes       int64
	TxBytes       int64
}

// DataPlane is what the reconciler needs from the kernel side. Every call
// is idempotent: repeating it with the same arguments leaves the device as
// the first call did, and a peer whose config is unchanged keeps its
// session. The peer calls report the peers that could not be applied in
// failed and leave the others applied; err means the call as a whole
// failed, and some of it may have taken effect (the reconciler trusts the
// device's counters over its own memory, see usage.go). Calls get a
// deadline (Config.DataPlaneTimeout) and must return soon after ctx ends.
type DataPlane interface {
	// Configure applies a node config change without dropping peers.
	Configure(ctx context.Context, cfg NodeConfig) error
	// UpdatePeers adds or changes exactly peers; every other peer is left
	// untouched.
	UpdatePeers(ctx context.Context, peers []PeerConfig) (failed map[Key]error, err error)
	// SyncPeers makes the device hold exactly all, the complete desired
	// set: peers not in it are removed, drift made behind the data plane's
	// back is repaired.
	SyncPeers(ctx context.Context, all []PeerConfig) (failed map[Key]error, err error)
	// RemovePeers removes the peers with these keys; removing a key the
	// device does not hold is a no-op.
	RemovePeers(ctx context.Context, keys []Key) (failed map[Key]error, err error)
	// Stats reads every peer's counters.
	Stats(ctx context.Context) ([]PeerStats, error)
	// Epoch changes whenever the device's counters restart from zero
	// (interface recreated, host rebooted).
	Epoch() string
}
