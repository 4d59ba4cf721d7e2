package node

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"time"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/reconcile"
)

// stateFile is the local state's name in Config.StateDir.
const stateFile = "state.json"

// localStateWait is how long a node with a saved state waits for the
// database at start before serving from that state (a variable for tests).
var localStateWait = 5 * time.Second

// nodeRow reads the node's row. With a saved state on disk (lazy), the
// database gets localStateWait; unreachable past it, the saved state is
// read and, when it is this node's and readable, its node row is used and
// the state returned for Restore. Otherwise the node waits for the
// database as long as it takes.
func (n *Node) nodeRow(ctx context.Context, lazy bool) (events.Node, *reconcile.LocalState, error) {
	if !lazy {
		row, err := waitNode(ctx, n.store, n.cfg.NodeID, n.log)
		return row, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, localStateWait)
	row, err := waitNode(wctx, n.store, n.cfg.NodeID, n.log)
	cancel()
	if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
		return row, nil, err
	}
	if saved := n.readState(); saved != nil {
		return saved.Node, saved, nil
	}
	row, err = waitNode(ctx, n.store, n.cfg.NodeID, n.log)
	return row, nil, err
}

// readState returns the saved state, or nil with a warning when it cannot
// be trusted (corrupt, another node's, another format version).
func (n *Node) readState() *reconcile.LocalState {
	var s reconcile.LocalState
	saved, err := n.state.Read(n.cfg.NodeID, reconcile.LocalStateVersion, &s)
	if err == nil && s.Node.ID != n.cfg.NodeID {
		err = errors.New("its node row is another node's")
	}
	if err != nil {
		n.log.Warn("local state ignored; waiting for the database", "path", n.state.Path(), "err", err)
		return nil
	}
	n.log.Info("database unreachable at start", "waited", localStateWait, "saved_at", saved, "peers", len(s.Peers))
	return &s
}

// restore serves the saved state until the database answers; when it
// cannot, the node waits for the database as without one.
func (n *Node) restore(ctx context.Context, s *reconcile.LocalState) {
	if err := n.rec.Restore(ctx, s); err != nil {
		n.log.Error("cannot serve from local state; waiting for the database", "err", err)
		return
	}
	n.log.Warn("serving from local state until the database answers", "peers", len(s.Peers))
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
