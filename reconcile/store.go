package reconcile

import (
	"context"

	"github.com/waylume/waylume-node/events"
)

// Store is what the reconciler needs from the control plane; *supabase.Store
// satisfies it. Errors are classified with the sentinels of package events:
// one matching events.ErrNotFound (errors.Is) means the row is gone or not
// this node's, one matching events.ErrRefused that the database refuses the
// write for good; anything else is transient and retried.
type Store interface {
	// Snapshot returns the node's row and all its peers, consistently.
	Snapshot(ctx context.Context, nodeID string) (events.Node, []events.Peer, error)
	Node(ctx context.Context, nodeID string) (events.Node, error)
	// Peer returns one of the node's peers; events.ErrNotFound when it is
	// gone or no longer this node's.
	Peer(ctx context.Context, nodeID, peerID string) (events.Peer, error)
	// PeerStatuses returns the node's status rows: totals and the
	// counter baselines of the last committed usage flush.
	PeerStatuses(ctx context.Context, nodeID string) ([]events.PeerStatus, error)
	// QuotaUsage returns, per peer, the bytes used since its
	// quota_reset_at (the sum of its usage rows ending after it), so that
	// after a restart the quota counts what was used before it too.
	QuotaUsage(ctx context.Context, nodeID string) (map[string]int64, error)
	// WriteStatus appends usage rows (idempotent per peer and period_end)
	// and upserts status rows, in one transaction; events.ErrRefused when
	// the database refuses the batch for good (nothing of it committed).
	WriteStatus(ctx context.Context, nodeID string, usage []events.Usage, status []events.PeerStatus) error
	Heartbeat(ctx context.Context, nodeID string, hb events.Heartbeat) error
}
