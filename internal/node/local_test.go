package node

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/statefile"
	"github.com/waylume/waylume-node/reconcile"
	"github.com/waylume/waylume-node/supabase"
)

const testNodeID = "00000000-0000-0000-0000-00000000000a"

// With the database unreachable, a saved state of this node is served; a
// corrupt one, another node's or one of another format version is ignored
// and the node keeps waiting for the database.
func TestNodeRowFromLocalState(t *testing.T) {
	defer func(d time.Duration) { localStateWait = d }(localStateWait)
	localStateWait = 200 * time.Millisecond
	// Port 1 on loopback: nothing listens, every connect is refused.
	store, err := supabase.OpenStore(context.Background(), "postgres://node:pw@127.0.0.1:1/db?connect_timeout=1", supabase.StoreOptions{Lazy: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	mine := &reconcile.LocalState{Node: events.Node{ID: testNodeID, ListenPort: 51999}}
	for _, tc := range []struct {
		name  string
		write func(f *statefile.File) error
		serve bool
	}{
		{"this node's", func(f *statefile.File) error { return f.Write(testNodeID, reconcile.LocalStateVersion, mine) }, true},
		{"corrupt", func(f *statefile.File) error {
			return os.WriteFile(f.Path(), []byte(`{"format":"waylume-node-sta`), 0o600)
		}, false},
		{"another node's", func(f *statefile.File) error {
			return f.Write("00000000-0000-0000-0000-00000000000b", reconcile.LocalStateVersion, mine)
		}, false},
		{"another version", func(f *statefile.File) error { return f.Write(testNodeID, reconcile.LocalStateVersion+1, mine) }, false},
		{"another node's row inside", func(f *statefile.File) error {
			return f.Write(testNodeID, reconcile.LocalStateVersion, &reconcile.LocalState{Node: events.Node{ID: "x"}})
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			f := statefile.New(dir, stateFile)
			if err := tc.write(f); err != nil {
				t.Fatal(err)
			}
			n := &Node{cfg: Config{NodeID: testNodeID, StateDir: dir}, log: slog.New(slog.DiscardHandler), store: store,
				state: statefile.New(dir, stateFile)}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			row, saved, err := n.nodeRow(ctx, exists(filepath.Join(dir, stateFile)))
			if !tc.serve {
				if saved != nil || !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("served %v, err %v; want to keep waiting for the database", saved != nil, err)
				}
				return
			}
			if err != nil || saved == nil || row.ListenPort != 51999 {
				t.Fatalf("row %+v saved %v err %v; want the saved node row", row, saved != nil, err)
			}
		})
	}
}
