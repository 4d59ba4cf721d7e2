package events

import "time"

// Kind says what an Event is about.
type Kind uint8

const (
	// PeerChanged: the peer row ID was inserted or updated. Peer carries
	// the new row when the source had it whole; nil means "read it from the
	// store" (LISTEN/NOTIFY, or a Realtime record flagged incomplete).
	PeerChanged Kind = iota + 1
	// PeerDeleted: the peer row ID is gone (or no longer this node's).
	PeerDeleted
	// NodeChanged: the node's own row changed; Node carries it when whole.
	NodeChanged
	// Resync: the source may have missed changes (first subscribe,
	// reconnect, lost events). The consumer must reread all desired state.
	Resync
)

func (k Kind) String() string {
	switch k {
	case PeerChanged:
		return "peer_changed"
	case PeerDeleted:
		return "peer_deleted"
	case NodeChanged:
		return "node_changed"
	case Resync:
		return "resync"
	}
	return "unknown"
}

// Event is a hint that desired state changed.
type Event struct {
	Kind   Kind
	ID     string // row id: peers.id or nodes.id; empty for Resync
	Peer   *Peer  // optional hint for PeerChanged
	Node   *Node  // optional hint for NodeChanged
	Source string // "realtime", "listen", "timer": for logs and metrics
	// Commit is the commit time the source reported, zero when unknown;
	// it feeds the event-to-kernel latency metric.
	Commit time.Time
}

// Sink receives events. Sources call Add from their read loops, so it must
// not block for long; the reconciler's queue coalesces instead of blocking.
type Sink interface {
	Add(Event)
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(Event)

// Add calls f(e).
func (f SinkFunc) Add(e Event) { f(e) }
