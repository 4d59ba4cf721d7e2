package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/migrations"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

// check's Realtime line against the protocol-faithful test server, with a
// token minted by the token command: the server verifies its signature and
// joins as role waylume_node under RLS.
func TestCheckRealtime(t *testing.T) {
	dbfix.SupabaseRoles(t)
	db := pgtest.New(t)
	dbfix.SupabaseRealtime(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
	var nodeID string
	if err := conn.QueryRow(ctx, `SELECT waylume.create_node('rt', 'x:1', '10.9.0.1/24')::text`).Scan(&nodeID); err != nil {
		t.Fatal(err)
	}
	const secret = "realtime-test-secret-with-32-characters!"
	srv, err := realtimetest.New(ctx, realtimetest.Config{DatabaseURL: db.URL, JWTSecret: secret})
	if err != nil {
		t.Fatalf("realtime test server (needs wal2json): %v", err)
	}
	t.Cleanup(srv.Close)

	code, tok, stderr := runCLI(t, map[string]string{"WAYLUME_JWT_SECRET": secret}, "token", "--node-id", nodeID, "--ttl", "1h")
	if code != exitOK {
		t.Fatalf("token: %s", stderr)
	}
	env := map[string]string{
		"WAYLUME_DATABASE_URL": db.URL, "WAYLUME_NODE_ID": nodeID,
		"WAYLUME_REALTIME_URL": srv.URL(), "WAYLUME_SUPABASE_KEY": realtimetest.AnonKey(secret),
		"WAYLUME_ACCESS_TOKEN": strings.TrimSpace(tok),
	}
	_, out, _ := runCLI(t, env, "check")
	if l := checkLine(t, out, "realtime"); !strings.HasPrefix(l, "ok") || !strings.Contains(l, "subscribed") {
		t.Errorf("realtime line with a valid token: %q", l)
	}
	if strings.Contains(out, "ok    events") {
		t.Error("with Realtime configured, check still tests LISTEN as the event source")
	}

	// An expired token: one FAIL line naming the problem, and exit 1.
	env["WAYLUME_ACCESS_TOKEN"] = realtimetest.NodeToken(secret, nodeID, -time.Hour)
	code, out, _ = runCLI(t, env, "check")
	l := checkLine(t, out, "realtime")
	if code != exitFail || !strings.HasPrefix(l, "FAIL") || !strings.Contains(strings.ToLower(l), "expired") {
		t.Errorf("expired token: code %d line %q", code, l)
	}
	if strings.Contains(out, env["WAYLUME_ACCESS_TOKEN"]) {
		t.Error("check printed the token")
	}

	// Another node's token: the private join is refused, and the line
	// names the policy and grants to check.
	var other string
	if err := conn.QueryRow(ctx, `SELECT waylume.create_node('rt2', 'x:1', '10.9.0.1/24')::text`).Scan(&other); err != nil {
		t.Fatal(err)
	}
	env["WAYLUME_ACCESS_TOKEN"] = realtimetest.NodeToken(secret, other, time.Hour)
	code, out, _ = runCLI(t, env, "check")
	l = checkLine(t, out, "realtime")
	if code != exitFail || !strings.Contains(l, "Unauthorized") || !strings.Contains(l, "waylume_node_receive_") || !strings.Contains(l, "USAGE on schema realtime") {
		t.Errorf("another node's token: code %d line %q", code, l)
	}

	// postgres_changes stays a setting.
	env["WAYLUME_ACCESS_TOKEN"], env["WAYLUME_REALTIME_MODE"] = realtimetest.NodeToken(secret, nodeID, time.Hour), "postgres_changes"
	_, out, _ = runCLI(t, env, "check")
	if l := checkLine(t, out, "realtime"); !strings.HasPrefix(l, "ok") || !strings.Contains(l, "postgres_changes subscribed") {
		t.Errorf("realtime line in postgres_changes mode: %q", l)
	}
}
