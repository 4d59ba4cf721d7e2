package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/jwt"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/supabase/auth"
	"github.com/waylume/waylume-node/supabase/auth/authtest"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

// project is a 2026 Supabase project in stand-ins: a migrated database,
// Auth with asymmetric keys and opaque API keys, and Realtime verifying
// through Auth's JWKS with no legacy secret.
type project struct {
	db   *pgtest.DB
	auth *authtest.Server
	rt   *realtimetest.Server
}

func newProject(t *testing.T) *project {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Shaped like Supabase (roles, a realtime schema) before the
	// migrations, so the node's private topic has its policies.
	p := &project{db: dbfix.MigratedSupabase(t)}
	var err error
	if p.auth, err = authtest.New(authtest.Config{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.auth.Close)
	p.rt, err = realtimetest.New(ctx, realtimetest.Config{DatabaseURL: p.db.URL, JWKSURL: p.auth.JWKSURL(),
		APIKeys: []string{p.auth.PublishableKey(), p.auth.SecretKey()}})
	if err != nil {
		t.Fatalf("realtime test server (needs wal2json): %v", err)
	}
	t.Cleanup(p.rt.Close)
	return p
}

// readEnvFile parses KEY=value lines, skipping comments.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && !strings.HasPrefix(k, "#") {
			out[k] = v
		}
	}
	return out
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// node create --auth-email makes the node's row, its login role and its
// Auth user, writes 0600 files and prints no secret; check verifies both
// identities; node revoke ends them in one step and node auth makes a new
// Auth user that works.
func TestNodeAuthUserLifecycle(t *testing.T) {
	p := newProject(t)
	dir := t.TempDir()
	envFile := filepath.Join(dir, "n1.env")
	op := map[string]string{
		"WAYLUME_DATABASE_URL": p.db.URL, "WAYLUME_SUPABASE_URL": p.auth.URL(),
		"WAYLUME_SUPABASE_KEY": p.auth.PublishableKey(), "WAYLUME_SUPABASE_SECRET_KEY": p.auth.SecretKey(),
	}
	code, out, stderr := runCLI(t, op, "node", "create", "--name", "n1", "--endpoint", "n1.example:51820", "--address", "10.9.0.1/24",
		"--auth-email", "n1@nodes.example", "--env-file", envFile, "--login-password-file", filepath.Join(dir, "db.password"))
	if code != exitOK {
		t.Fatalf("node create: %d %s", code, stderr)
	}
	id := strings.TrimSpace(out)
	env := readEnvFile(t, envFile)
	pw, err := auth.ReadSecretFile(env["WAYLUME_AUTH_PASSWORD_FILE"])
	if err != nil {
		t.Fatal(err)
	}
	dbPW, _ := auth.ReadSecretFile(filepath.Join(dir, "db.password"))
	for _, secret := range []string{pw, dbPW, p.auth.SecretKey()} {
		if strings.Contains(out+stderr, secret) {
			t.Fatal("node create printed a secret")
		}
	}
	if mode(t, envFile) != 0o600 || mode(t, env["WAYLUME_AUTH_PASSWORD_FILE"]) != 0o600 {
		t.Error("env or password file is not 0600")
	}
	if env["WAYLUME_NODE_ID"] != id || env["WAYLUME_SUPABASE_URL"] != p.auth.URL() || env["WAYLUME_SUPABASE_KEY"] != p.auth.PublishableKey() ||
		env["WAYLUME_AUTH_EMAIL"] != "n1@nodes.example" {
		t.Errorf("env file %v", env)
	}
	client, _ := auth.NewClient(p.auth.URL(), p.auth.PublishableKey(), nil)
	s, err := client.SignInWithPassword(context.Background(), "n1@nodes.example", pw)
	if err != nil || s.User.NodeID() != id || s.User.ConfirmedAt == "" {
		t.Fatalf("sign-in with the written password: %v (user %+v)", err, s.User)
	}

	// check, configured from the env file alone plus the node's login:
	// the Auth line and a Realtime subscription with the Auth token.
	node := readEnvFile(t, envFile)
	node["WAYLUME_REALTIME_URL"] = p.rt.URL()
	node["WAYLUME_DATABASE_URL"] = p.db.URLAs("waylume_node_" + strings.ReplaceAll(id, "-", ""))
	code, out, _ = runCLI(t, node, "check")
	if l := checkLine(t, out, "auth"); !strings.HasPrefix(l, "ok") || !strings.Contains(l, "node_id matches") {
		t.Errorf("auth line: %q", l)
	}
	if l := checkLine(t, out, "realtime"); !strings.HasPrefix(l, "ok") {
		t.Errorf("realtime line with the Auth token: %q", l)
	}
	if strings.Contains(out, pw) {
		t.Error("check printed the password")
	}

	code, out, stderr = runCLI(t, op, "node", "revoke", "--node-id", id)
	if code != exitOK || !strings.Contains(out, "1 Auth user(s) deleted") || !strings.Contains(out, "login role") {
		t.Fatalf("node revoke: %d %q %q", code, out, stderr)
	}
	if _, err := client.SignInWithPassword(context.Background(), "n1@nodes.example", pw); err == nil {
		t.Error("the revoked node's Auth user still signs in")
	}
	if _, err := pgx.Connect(context.Background(), node["WAYLUME_DATABASE_URL"]); err == nil {
		t.Error("the revoked node's login role still connects")
	}
	node["WAYLUME_DATABASE_URL"] = p.db.URL
	if _, out, _ = runCLI(t, node, "check"); !strings.HasPrefix(checkLine(t, out, "auth"), "FAIL") {
		t.Errorf("check after revoke: %q", checkLine(t, out, "auth"))
	}

	// A new Auth user for the same node works: tokens issued after the
	// revocation pass its floor.
	time.Sleep(1100 * time.Millisecond) // iat is in whole seconds
	if code, _, stderr := runCLI(t, op, "node", "auth", "--node-id", id, "--auth-email", "n1b@nodes.example", "--env-file", envFile); code != exitOK {
		t.Fatalf("node auth: %s", stderr)
	}
	node = readEnvFile(t, envFile)
	node["WAYLUME_REALTIME_URL"], node["WAYLUME_DATABASE_URL"] = p.rt.URL(), p.db.URL
	if _, out, _ = runCLI(t, node, "check"); !strings.HasPrefix(checkLine(t, out, "realtime"), "ok") {
		t.Errorf("realtime with the new Auth user: %q", checkLine(t, out, "realtime"))
	}
}

// An ES256 token from token --signing-key is accepted by Realtime, which
// knows only the key's public half (the project's JWKS).
func TestCheckRealtimeSigningKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := dbfix.MigratedSupabase(t)
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var nodeID string
	if err := conn.QueryRow(ctx, `SELECT waylume.create_node('sk', 'x:1', '10.9.0.1/24')::text`).Scan(&nodeID); err != nil {
		t.Fatal(err)
	}
	keyFile, _ := writeSigningKey(t, "imported-es256")
	code, tok, stderr := runCLI(t, nil, "token", "--node-id", nodeID, "--signing-key", keyFile, "--ttl", "1h")
	if code != exitOK {
		t.Fatalf("token: %s", stderr)
	}
	b, _ := os.ReadFile(keyFile)
	key, err := publicJWK(b)
	if err != nil {
		t.Fatal(err)
	}
	jwks := []byte(`{"keys":[` + key + `]}`)
	srv, err := realtimetest.New(ctx, realtimetest.Config{DatabaseURL: db.URL, JWKS: jwks, APIKeys: []string{"sb_publishable_test"}})
	if err != nil {
		t.Fatalf("realtime test server (needs wal2json): %v", err)
	}
	t.Cleanup(srv.Close)
	env := map[string]string{"WAYLUME_DATABASE_URL": db.URL, "WAYLUME_NODE_ID": nodeID, "WAYLUME_REALTIME_URL": srv.URL(),
		"WAYLUME_SUPABASE_KEY": "sb_publishable_test", "WAYLUME_ACCESS_TOKEN": strings.TrimSpace(tok)}
	if _, out, _ := runCLI(t, env, "check"); !strings.HasPrefix(checkLine(t, out, "realtime"), "ok") {
		t.Errorf("realtime with a signing-key token: %q", checkLine(t, out, "realtime"))
	}
}

// publicJWK returns the public JWK of a private key file, as the
// project publishes it.
func publicJWK(b []byte) (string, error) {
	k, err := jwt.ParseKey(b)
	if err != nil {
		return "", err
	}
	pub, err := json.Marshal(k.PublicJWK())
	return string(pub), err
}
