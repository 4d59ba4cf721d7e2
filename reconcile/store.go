package reconcile

import (
	"context"

	"github.com/waylume/waylume-node/events"
)

// Store is what the reconciler needs from the control plane. Its method
// set is a subset of *supabase.Store's, which satisfies it as is.
type Store interface {
	// Snapshot returns the node's row and all its peers, consistently.
	Snapshot(ctx context.Context, nodeID string) (events.Node, []events.Peer, error)
	Node(ctx context.Context, nodeID string) (events.Node, error)
	// Peer returns one of the node's peers; an error for which
	// Config.IsNotFound is true means it is gone or no longer this node's.
	Peer(ctx context.Context, nodeID, peerID string) (events.Peer, error)
	// PeerStatuses returns the node's status rows: totals and the
	// counter baselines of the last committed usage flush.
	PeerStatuses(ctx context.Context, nodeID string) ([]events.PeerStatus, error)
	// WriteStatus appends usage rows (idempotent per peer and period_end)
	// and upserts status rows, in one transaction.
	WriteStatus(ctx context.Context, nodeID string, usage []events.Usage, status []events.PeerStatus) error
	Heartbeat(ctx context.Context, nodeID string, hb events.Heartbeat) error
}

// QuotaStore is optional: a Store that also implements it tells the
// reconciler after a restart how many bytes each peer used since its
// quota_reset_at (sum of peer_usage rows ending after it). Without it the
// reconciler counts from the lifetime totals for peers whose quota was
// never reset and from zero for the others.
type QuotaStore interface {
	QuotaUsage(ctx context.Context, nodeID string) (map[string]int64, error)
}
