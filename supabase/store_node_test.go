package supabase_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/supabase"
)

// The overview as the node's own login reads it: its row, its peers (not
// B's), their status rows, and when it was last seen.
func TestOverview(t *testing.T) {
	f := newStoreFixture(t)
	s := f.open(t, f.urlA)
	ids := dbfix.AddPeers(t, f.db, f.a, 2)
	dbfix.AddPeers(t, f.db, f.b, 1)
	dbfix.Exec(t, f.db, `INSERT INTO waylume.peer_status (peer_id, node_id, state, reason) VALUES ($1, $2, 'blocked', 'disabled')`, ids[1], f.a)

	o, err := s.Overview(f.ctx, f.a)
	if err != nil {
		t.Fatal(err)
	}
	if o.Node.ID != f.a || o.Node.Name != "node-a" || !o.LastSeenAt.IsZero() || len(o.Peers) != 2 {
		t.Fatalf("overview: node %+v, last seen %v, %d peers", o.Node, o.LastSeenAt, len(o.Peers))
	}
	if len(o.Status) != 1 || o.Status[ids[1]].State != events.StateBlocked || o.Status[ids[1]].Reason != "disabled" {
		t.Errorf("status rows: %+v", o.Status)
	}
	if err := s.Heartbeat(f.ctx, f.a, events.Heartbeat{Status: "online"}); err != nil {
		t.Fatal(err)
	}
	if o, err := s.Overview(f.ctx, f.a); err != nil || o.LastSeenAt.IsZero() || o.Node.Status != "online" {
		t.Errorf("after a heartbeat: last seen %v, status %q, err %v", o.LastSeenAt, o.Node.Status, err)
	}
	if _, err := s.Overview(f.ctx, f.b); !errors.Is(err, supabase.ErrNotFound) {
		t.Errorf("another node's overview: %v, want ErrNotFound", err)
	}
}

func TestSingleConnectionReads(t *testing.T) {
	f := newStoreFixture(t)
	conn, err := supabase.Connect(f.ctx, f.urlA)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if v, err := supabase.ServerVersion(f.ctx, conn); err != nil || v == "" {
		t.Errorf("server version %q, err %v", v, err)
	}
	if n, err := supabase.NodeRow(f.ctx, conn, f.a); err != nil || n.ID != f.a || n.Name != "node-a" {
		t.Errorf("own row: %+v, err %v", n, err)
	}
	if _, err := supabase.NodeRow(f.ctx, conn, f.b); !errors.Is(err, supabase.ErrNotFound) {
		t.Errorf("another node's row: %v, want ErrNotFound", err)
	}
	if err := supabase.ListenRoundTrip(f.ctx, conn); err != nil {
		t.Errorf("LISTEN/NOTIFY: %v", err)
	}
	// Still usable: the round trip leaves no session state behind.
	if err := supabase.ListenRoundTrip(f.ctx, conn); err != nil {
		t.Errorf("second LISTEN/NOTIFY: %v", err)
	}
}

func TestConnectKeepsTheURLOutOfErrors(t *testing.T) {
	for _, url := range []string{"postgres://u:hunter2secret@[::1", "postgres://u:hunter2secret@/db?host=/nonexistent&connect_timeout=1"} {
		_, err := supabase.Connect(context.Background(), url)
		if err == nil || strings.Contains(err.Error(), "hunter2secret") {
			t.Errorf("Connect(%q) = %v", url, err)
		}
	}
}

func TestTransactionPoolerDetected(t *testing.T) {
	for url, want := range map[string]bool{
		"postgres://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres": true,
		"postgres://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres": false,
		"postgres://postgres:pw@db.ref.supabase.co/postgres":                              false,
	} {
		if got := supabase.TransactionPooler(url); got != want {
			t.Errorf("TransactionPooler(%s) = %v", url, got)
		}
	}
}
