package events

import (
	"net/netip"
	"time"
)

// Node is the node's own row of waylume.nodes.
type Node struct {
	ID         string
	Name       string
	Endpoint   string // host:port clients dial
	ListenPort int
	Address    netip.Prefix // the node's tunnel address; its masked network is the client pool
	Address6   netip.Prefix // zero when the node has no IPv6 pool
	DNS        []netip.Addr
	MTU        int // 0: the data plane's default
	Status     string
	UpdatedAt  time.Time
}

// Peer is one row of waylume.peers. Rows are untrusted input: every field is
// exactly what the database holds and is validated before it reaches the
// kernel. Zero values stand for SQL NULL where the column is nullable.
type Peer struct {
	ID                  string
	NodeID              string
	PublicKey           string // base64, as stored
	PresharedKey        string // base64 or ""; a secret: never log it
	Address             netip.Prefix
	Address6            netip.Prefix
	AllowedIPs          []netip.Prefix
	PersistentKeepalive int   // seconds, 0: off
	DownloadKbps        int64 // node -> client, 0: unlimited
	UploadKbps          int64 // client -> node, 0: unlimited
	QuotaBytes          int64 // upload+download since QuotaResetAt, 0: unlimited
	QuotaResetAt        time.Time
	ExpiresAt           time.Time // zero: never
	Enabled             bool
	CreatedAt           time.Time
	UpdatedAt           time.Time
}

// Peer states written to waylume.peer_status.state.
const (
	StateActive   = "active"
	StateBlocked  = "blocked"
	StateRejected = "rejected"
)

// PeerStatus is the node-written row of waylume.peer_status for one peer.
// Writers send it whole: every field is an absolute value, so writing the
// same row twice is harmless.
type PeerStatus struct {
	PeerID          string
	NodeID          string
	State           string // StateActive, StateBlocked or StateRejected
	Reason          string // "expired", "quota_exceeded", "disabled", "invalid: <why>", ""
	LastHandshakeAt time.Time
	Endpoint        string
	UploadBytes     int64 // lifetime total, client's view (WireGuard receive bytes)
	DownloadBytes   int64 // lifetime total, client's view (WireGuard transmit bytes)
	// Raw kernel counters already accounted for, and the epoch of the
	// device they were read from. A different epoch, or a counter below its
	// baseline, means the counter restarted from zero.
	RxBaseline   int64
	TxBaseline   int64
	CounterEpoch string
	AppliedAt    time.Time
}

// Usage is one append-only delta row of waylume.peer_usage.
type Usage struct {
	PeerID        string
	PeriodStart   time.Time
	PeriodEnd     time.Time
	UploadBytes   int64
	DownloadBytes int64
}

// Heartbeat is what the node writes to its row of waylume.node_status
// (and its public key to waylume.nodes).
type Heartbeat struct {
	PublicKey      string
	Status         string // "online", "offline", "draining"
	Version        string
	Peers          int
	ActiveSessions int
}
