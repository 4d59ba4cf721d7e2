package migrations_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
)

// message is one row of realtime.messages as a test reads it.
type message struct {
	Topic, Event string
	Private      bool
	Payload      map[string]any
	Raw          string
}

// takeMessages returns and deletes every broadcast message, oldest first.
func takeMessages(t *testing.T, db *pgtest.DB) []message {
	t.Helper()
	conn := connect(t, db.URL)
	rows, err := conn.Query(context.Background(), `DELETE FROM realtime.messages RETURNING topic, event, private, payload::text, inserted_at`)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		m  message
		at string
	}
	var out []row
	for rows.Next() {
		var r row
		var at any
		if err := rows.Scan(&r.m.Topic, &r.m.Event, &r.m.Private, &r.m.Raw, &at); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(r.m.Raw), &r.m.Payload); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	msgs := make([]message, len(out))
	for i, r := range out {
		msgs[i] = r.m
	}
	return msgs
}

// brief is a message as "topic-node op table id node_id" for comparison.
func brief(m message, names map[string]string) string {
	name := func(v any) string {
		s, _ := v.(string)
		if n, ok := names[s]; ok {
			return n
		}
		return s
	}
	return strings.Join([]string{name(strings.TrimPrefix(m.Topic, "waylume:node:")), m.Event,
		name(m.Payload["table"]), name(m.Payload["op"]), name(m.Payload["id"]), name(m.Payload["node_id"])}, " ")
}

func TestBroadcastRouting(t *testing.T) {
	db := dbfix.MigratedSupabase(t)
	a := dbfix.CreateNode(t, db, "node-a", "10.51.0.1/24")
	b := dbfix.CreateNode(t, db, "node-b", "10.52.0.1/24")
	takeMessages(t, db)
	const secretPSK = "c2VjcmV0LXByZXNoYXJlZC1rZXktdGhhdC1pcy0zMmI="
	var p, key string
	dbfix.QueryRow(t, db, `INSERT INTO waylume.peers (node_id, public_key, preshared_key, metadata)
		VALUES ($1, `+dbfix.RandomKeySQL+`, $2, '{"user":"secret-user@example.com"}') RETURNING id::text, public_key`,
		[]any{a, secretPSK}, &p, &key)
	dbfix.Exec(t, db, `UPDATE waylume.peers SET download_kbps = 1000 WHERE id = $1`, p)
	dbfix.Exec(t, db, `UPDATE waylume.peers SET node_id = $1 WHERE id = $2`, b, p)
	dbfix.Exec(t, db, `DELETE FROM waylume.peers WHERE id = $1`, p)
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET mtu = 1400 WHERE id = $1`, a)
	// The node's own writes are not configuration: no message.
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET public_key = $1 WHERE id = $2`, key, b)
	dbfix.Exec(t, db, `INSERT INTO waylume.node_status (node_id, status, last_seen_at) VALUES ($1, 'online', now())`, a)
	dbfix.Exec(t, db, `INSERT INTO waylume.node_canary (node_id, nonce) VALUES ($1, 'n1')`, b)

	names := map[string]string{a: "A", b: "B", p: "P"}
	var got []string
	msgs := takeMessages(t, db)
	for _, m := range msgs {
		got = append(got, brief(m, names))
		if !m.Private {
			t.Errorf("message on %s is public", m.Topic)
		}
		for k := range m.Payload {
			if !slices.Contains([]string{"table", "op", "id", "node_id", "nonce"}, k) {
				t.Errorf("payload key %q in %s", k, m.Raw)
			}
		}
		for _, secret := range []string{key, secretPSK, "secret-user"} {
			if strings.Contains(m.Raw, secret) {
				t.Errorf("payload %s carries a secret", m.Raw)
			}
		}
	}
	want := []string{
		"A change peers INSERT P A",
		"A change peers UPDATE P A",
		"B change peers UPDATE P B", // the move: the new node ...
		"A change peers UPDATE P B", // ... and the old, with the new node_id
		"B change peers DELETE P B",
		"A change nodes UPDATE A A",
		"B canary node_canary INSERT B B",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("messages:\n got %q\nwant %q", got, want)
	}
}

// The node's topic can be read, the way Realtime checks a private join,
// by exactly that node under either identity, and by nobody else.
func TestBroadcastTopicIsolation(t *testing.T) {
	ctx := context.Background()
	db := dbfix.MigratedSupabase(t)
	a := dbfix.CreateNode(t, db, "node-a", "10.51.0.1/24")
	b := dbfix.CreateNode(t, db, "node-b", "10.52.0.1/24")
	admin := connect(t, db.URL)
	topicA, topicB := "waylume:node:"+a, "waylume:node:"+b

	// canRead does what Realtime does for a private join: in a transaction
	// that is rolled back, a message for the topic is written, then read
	// back as the token's role with its claims and realtime.topic set.
	canRead := func(t *testing.T, role, claims, topic string) bool {
		t.Helper()
		tx, err := admin.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		var id string
		if err := tx.QueryRow(ctx, `INSERT INTO realtime.messages (topic, extension, event, payload, private)
			VALUES ($1, 'broadcast', 'probe', '{}', true) RETURNING id::text`, topic).Scan(&id); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true),
			set_config('realtime.topic', $3, true)`, role, claims, topic); err != nil {
			t.Fatal(err)
		}
		var n int
		err = tx.QueryRow(ctx, `SELECT count(*) FROM realtime.messages WHERE id = $1`, id).Scan(&n)
		var pg *pgconn.PgError
		if errors.As(err, &pg) && pg.Code == "42501" {
			return false
		}
		if err != nil {
			t.Fatalf("%s %s: %v", role, claims, err)
		}
		return n == 1
	}
	nodeA := `{"role":"waylume_node","node_id":"` + a + `","exp":4102444800}`
	authA := `{"role":"authenticated","sub":"u-a","app_metadata":{"node_id":"` + a + `"},"exp":4102444800}`
	cases := []struct {
		name, role, claims string
		readsA, readsB     bool
	}{
		{"node A (waylume_node)", "waylume_node", nodeA, true, false},
		{"node A (Auth user)", "authenticated", authA, true, false},
		{"node B", "waylume_node", `{"role":"waylume_node","node_id":"` + b + `"}`, false, true},
		{"end user", "authenticated", `{"role":"authenticated","sub":"u-1","app_metadata":{"provider":"email"}}`, false, false},
		{"end user with user_metadata", "authenticated", `{"role":"authenticated","user_metadata":{"node_id":"` + a + `"}}`, false, false},
		{"anon", "anon", `{"role":"anon"}`, false, false},
		{"anon claiming a node", "anon", `{"role":"anon","node_id":"` + a + `","app_metadata":{"node_id":"` + a + `"}}`, false, false},
		{"no claims", "waylume_node", ``, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := canRead(t, c.role, c.claims, topicA); got != c.readsA {
				t.Errorf("reads A's topic: %v, want %v", got, c.readsA)
			}
			if got := canRead(t, c.role, c.claims, topicB); got != c.readsB {
				t.Errorf("reads B's topic: %v, want %v", got, c.readsB)
			}
		})
	}

	// A's own database session reads no messages directly, not even its
	// own topic's, and may send none.
	dbfix.Exec(t, db, `SELECT realtime.send('{"x":1}', 'e', $1, true), realtime.send('{"x":1}', 'e', $2, true)`, topicA, topicB)
	login := connect(t, dbfix.NodeLogin(t, db, a))
	var n int
	if err := login.QueryRow(ctx, `SELECT count(*) FROM realtime.messages`).Scan(&n); err != nil || n != 0 {
		t.Errorf("node login reads %d messages (%v)", n, err)
	}
	tx, err := login.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT set_config('realtime.topic', $1, true)`, topicB); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM realtime.messages`).Scan(&n); err != nil || n != 0 {
		t.Errorf("node login with realtime.topic set to B's reads %d messages (%v)", n, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO realtime.messages (topic, extension, payload, private) VALUES ($1, 'broadcast', '{}', true)`, topicA); err == nil {
		t.Error("node login inserted a message")
	}
}

// A broken Realtime never fails the app backend's write.
func TestBroadcastNeverFailsWrites(t *testing.T) {
	db := dbfix.MigratedSupabase(t)
	a := dbfix.CreateNode(t, db, "node-a", "10.51.0.1/24")
	// No partition takes the row: realtime.send's insert fails inside.
	dbfix.Exec(t, db, `DROP TABLE realtime.messages_default`)
	dbfix.AddPeers(t, db, a, 2)
	// realtime.send gone: the guard around it catches that.
	dbfix.Exec(t, db, `ALTER FUNCTION realtime.send(jsonb, text, text, boolean) RENAME TO send_gone`)
	ids := dbfix.AddPeers(t, db, a, 1)
	dbfix.Exec(t, db, `UPDATE waylume.peers SET enabled = false WHERE id = $1`, ids[0])
	dbfix.Exec(t, db, `DELETE FROM waylume.peers WHERE id = $1`, ids[0])
	var n int
	dbfix.QueryRow(t, db, `SELECT count(*) FROM waylume.peers`, nil, &n)
	if n != 2 {
		t.Fatalf("%d peers, want 2", n)
	}
}

// Plain PostgreSQL: no realtime schema, no broadcast triggers.
func TestBroadcastOnlyWithRealtime(t *testing.T) {
	db := dbfix.Migrated(t)
	var n int
	dbfix.QueryRow(t, db, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%broadcast' AND NOT tgisinternal`, nil, &n)
	if n != 0 {
		t.Fatalf("%d broadcast triggers on a database without Realtime", n)
	}
	a := dbfix.CreateNode(t, db, "node-a", "10.51.0.1/24")
	dbfix.AddPeers(t, db, a, 1)
	sb := dbfix.MigratedSupabase(t)
	dbfix.QueryRow(t, sb, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%broadcast' AND NOT tgisinternal`, nil, &n)
	if n != 3 {
		t.Fatalf("%d broadcast triggers with Realtime, want 3", n)
	}
}

// Liveness goes to node_status, unpublished; node_overview reads it under
// the old names, and the newer of it and an older node's columns.
func TestNodeStatus(t *testing.T) {
	ctx := context.Background()
	db := dbfix.Migrated(t)
	a := dbfix.CreateNode(t, db, "node-a", "10.51.0.1/24")
	b := dbfix.CreateNode(t, db, "node-b", "10.52.0.1/24")
	var published bool
	dbfix.QueryRow(t, db, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = 'supabase_realtime' AND tablename = 'node_status')`, nil, &published)
	if published {
		t.Fatal("node_status is in supabase_realtime")
	}
	login := connect(t, dbfix.NodeLogin(t, db, a))
	if _, err := login.Exec(ctx, `INSERT INTO waylume.node_status (node_id, status, last_seen_at, version, peer_count, active_sessions)
		VALUES ($1, 'online', now(), 'v2', 3, 1)`, a); err != nil {
		t.Fatalf("node writes its status: %v", err)
	}
	if _, err := login.Exec(ctx, `INSERT INTO waylume.node_status (node_id, status) VALUES ($1, 'online')`, b); err == nil {
		t.Error("node A wrote B's status")
	}
	var status, version string
	var peers int
	if err := login.QueryRow(ctx, `SELECT status, version, peer_count FROM waylume.node_overview`).Scan(&status, &version, &peers); err != nil ||
		status != "online" || version != "v2" || peers != 3 {
		t.Errorf("node_overview as A: %s %s %d (%v)", status, version, peers, err)
	}
	var n int
	if err := login.QueryRow(ctx, `SELECT count(*) FROM waylume.node_overview`).Scan(&n); err != nil || n != 1 {
		t.Errorf("A sees %d nodes in node_overview (%v), want 1", n, err)
	}
	// An older node heartbeats into waylume.nodes: the newer value wins.
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET status = 'online', last_seen_at = now() + interval '1 minute', version = 'v1' WHERE id = $1`, b)
	dbfix.QueryRow(t, db, `SELECT status, version FROM waylume.node_overview WHERE id = $1`, []any{b}, &status, &version)
	if status != "online" || version != "v1" {
		t.Errorf("older node through node_overview: %s %s", status, version)
	}
	dbfix.Exec(t, db, `UPDATE waylume.nodes SET status = 'offline', last_seen_at = now() - interval '1 hour', version = 'v0' WHERE id = $1`, a)
	dbfix.QueryRow(t, db, `SELECT status, version FROM waylume.node_overview WHERE id = $1`, []any{a}, &status, &version)
	if status != "online" || version != "v2" {
		t.Errorf("node_status older than the nodes columns? %s %s", status, version)
	}
}
