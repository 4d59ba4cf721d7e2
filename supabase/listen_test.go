package supabase_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/supabase"
)

type eventLog struct {
	ch chan events.Event
}

func (l *eventLog) Add(e events.Event) { l.ch <- e }

// next returns the next event or fails after a deadline.
func (l *eventLog) next(t *testing.T) events.Event {
	t.Helper()
	select {
	case e := <-l.ch:
		return e
	case <-time.After(20 * time.Second):
		t.Fatal("no event within 20s")
		return events.Event{}
	}
}

func (l *eventLog) expect(t *testing.T, kind events.Kind, id string) {
	t.Helper()
	e := l.next(t)
	if e.Kind != kind || e.ID != id || e.Source != "listen" {
		t.Fatalf("got %v %q from %q, want %v %q from listen", e.Kind, e.ID, e.Source, kind, id)
	}
}

func TestListen(t *testing.T) {
	f := newStoreFixture(t)
	sink := &eventLog{ch: make(chan events.Event, 1000)}
	ctx, cancel := context.WithCancel(f.ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	var runErr error
	go func() {
		defer wg.Done()
		// Node A's login role: LISTEN needs no table rights.
		runErr = supabase.Listen(ctx, supabase.ListenConfig{URL: f.urlA, NodeID: f.a, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, sink)
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()
	sink.expect(t, events.Resync, "")

	// Insert, update, delete of A's peers arrive; B's do not (a later
	// event of A's proves B's was not delivered in between).
	var p1 string
	dbfix.QueryRow(t, f.db, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, $2) RETURNING id::text`, []any{f.a, key1}, &p1)
	sink.expect(t, events.PeerChanged, p1)
	dbfix.AddPeers(t, f.db, f.b, 1)
	dbfix.Exec(t, f.db, `UPDATE waylume.peers SET download_kbps = 5000 WHERE id = $1`, p1)
	sink.expect(t, events.PeerChanged, p1)

	// Moved away and back, deleted: A hears "reread this row" each time;
	// the payload is a hint, never the verdict (anyone may NOTIFY).
	dbfix.Exec(t, f.db, `UPDATE waylume.peers SET node_id = $1 WHERE id = $2`, f.b, p1)
	sink.expect(t, events.PeerChanged, p1)
	dbfix.Exec(t, f.db, `UPDATE waylume.peers SET node_id = $1 WHERE id = $2`, f.a, p1)
	sink.expect(t, events.PeerChanged, p1)

	// Config changes of the node notify; heartbeats do not.
	dbfix.Exec(t, f.db, `UPDATE waylume.nodes SET status = 'online', last_seen_at = now(), version = 'x' WHERE id = $1`, f.a)
	dbfix.Exec(t, f.db, `UPDATE waylume.nodes SET mtu = 1400 WHERE id = $1`, f.b)
	dbfix.Exec(t, f.db, `UPDATE waylume.nodes SET mtu = 1400 WHERE id = $1`, f.a)
	sink.expect(t, events.NodeChanged, f.a)

	dbfix.Exec(t, f.db, `DELETE FROM waylume.peers WHERE id = $1`, p1)
	sink.expect(t, events.PeerChanged, p1)

	// A forged notification on A's channel (NOTIFY needs no privilege:
	// node B's login can send it) claiming a delete is still only a reread.
	var forged string
	dbfix.QueryRow(t, f.db, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, `+dbfix.RandomKeySQL+`) RETURNING id::text`, []any{f.a}, &forged)
	sink.expect(t, events.PeerChanged, forged)
	forger, err := pgx.Connect(ctx, dbfix.NodeLogin(t, f.db, f.b))
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close(ctx)
	if _, err := forger.Exec(ctx, `SELECT pg_notify(waylume.node_channel($1), json_build_object('table', 'peers', 'op', 'DELETE', 'id', $2::text, 'node_id', $1::text)::text)`, f.a, forged); err != nil {
		t.Fatal(err)
	}
	sink.expect(t, events.PeerChanged, forged)

	// Killing the server connection: Listen reconnects and says Resync.
	var killed int
	dbfix.QueryRow(t, f.db, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN %'`, nil, &killed)
	if killed != 1 {
		t.Fatalf("terminated %d LISTEN backends, want 1", killed)
	}
	sink.expect(t, events.Resync, "")
	var p2 string
	dbfix.QueryRow(t, f.db, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, $2) RETURNING id::text`, []any{f.a, key2}, &p2)
	sink.expect(t, events.PeerChanged, p2)

	// A whole server restart too.
	if err := f.db.Cluster.StopServer(); err != nil {
		t.Fatal(err)
	}
	if err := f.db.Cluster.StartServer(); err != nil {
		t.Fatal(err)
	}
	sink.expect(t, events.Resync, "")
	dbfix.Exec(t, f.db, `UPDATE waylume.peers SET enabled = false WHERE id = $1`, p2)
	sink.expect(t, events.PeerChanged, p2)

	cancel()
	wg.Wait()
	if runErr != context.Canceled {
		t.Fatalf("Listen returned %v, want context.Canceled", runErr)
	}
	select {
	case e := <-sink.ch:
		t.Fatalf("unexpected extra event %v %s", e.Kind, e.ID)
	default:
	}
}

// A bulk insert in one transaction notifies every row.
func TestListenBulk(t *testing.T) {
	f := newStoreFixture(t)
	sink := &eventLog{ch: make(chan events.Event, 20000)}
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	go supabase.Listen(ctx, supabase.ListenConfig{URL: f.urlA, NodeID: f.a, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, sink)
	sink.expect(t, events.Resync, "")
	ids := dbfix.AddPeers(t, f.db, f.a, 5000)
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for range ids {
		e := sink.next(t)
		if e.Kind != events.PeerChanged || !want[e.ID] {
			t.Fatalf("unexpected %v %s", e.Kind, e.ID)
		}
		delete(want, e.ID)
	}
}

// Anyone may NOTIFY on a node's channel: what the triggers never send is
// dropped and counted, and costs the node neither a read nor a resync.
func TestListenDropsJunk(t *testing.T) {
	f := newStoreFixture(t)
	sink := &eventLog{ch: make(chan events.Event, 1000)}
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	var dropped atomic.Int64
	go supabase.Listen(ctx, supabase.ListenConfig{URL: f.urlA, NodeID: f.a, Dropped: func() { dropped.Add(1) }}, sink)
	sink.expect(t, events.Resync, "")

	peer := "6f1c0b5e-7d8a-4b3c-9e2f-1a2b3c4d5e6f"
	junk := []string{
		``, `not json`, `[]`, `{}`, `null`,
		`{"table":"peers","op":"UPDATE","id":"x","node_id":"` + f.a + `"}`,
		`{"table":"peers","op":"UPDATE","id":"` + strings.ToUpper(peer) + `","node_id":"` + f.a + `"}`,
		`{"table":"peers","op":"UPDATE","id":"` + peer + `","node_id":"nope"}`,
		`{"table":"peers","op":"TRUNCATE","id":"` + peer + `","node_id":"` + f.a + `"}`,
		`{"table":"peer_status","op":"UPDATE","id":"` + peer + `","node_id":"` + f.a + `"}`,
		`{"table":"nodes","op":"UPDATE","id":"` + f.b + `","node_id":"` + f.b + `"}`,
		`{"table":"peers","op":"UPDATE","id":"` + peer + `","node_id":"` + f.a + `","extra":1}`,
		`{"table":"peers","op":"UPDATE","id":"` + peer + `","node_id":"` + f.a + `"} {}`,
	}
	forger, err := pgx.Connect(ctx, dbfix.NodeLogin(t, f.db, f.b))
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close(ctx)
	for _, p := range junk {
		if _, err := forger.Exec(ctx, `SELECT pg_notify(waylume.node_channel($1), $2)`, f.a, p); err != nil {
			t.Fatal(err)
		}
	}
	// A well-formed one, forged or not, is a reread hint and comes through
	// after all the junk: the junk produced nothing in between.
	if _, err := forger.Exec(ctx, `SELECT pg_notify(waylume.node_channel($1), $2)`, f.a,
		`{"table":"peers","op":"DELETE","id":"`+peer+`","node_id":"`+f.a+`"}`); err != nil {
		t.Fatal(err)
	}
	sink.expect(t, events.PeerChanged, peer)
	if got := dropped.Load(); got != int64(len(junk)) {
		t.Errorf("dropped %d, want %d", got, len(junk))
	}
}
