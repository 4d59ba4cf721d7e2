package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/waylume/waylume-node/internal/parse"
	"github.com/waylume/waylume-node/internal/pgtest"
	"github.com/waylume/waylume-node/migrations"
)

func sqlExec(t *testing.T, url, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// checkLine returns the check output line for name.
func checkLine(t *testing.T, out, name string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^(ok|FAIL)\s+` + regexp.QuoteMeta(name) + `\s.*$`)
	m := re.FindString(out)
	if m == "" {
		t.Fatalf("no %q line in check output:\n%s", name, out)
	}
	return m
}

func TestMigrateNodeCreateAndCheck(t *testing.T) {
	db := pgtest.New(t)
	env := map[string]string{"WAYLUME_DATABASE_URL": db.URL}

	// Before migrating, check says so and fails.
	code, out, _ := runCLI(t, env, "check")
	if code != exitFail {
		t.Errorf("check on an empty database: code %d", code)
	}
	if l := checkLine(t, out, "migrations"); !strings.HasPrefix(l, "FAIL") || !strings.Contains(l, "waylume-node migrate") {
		t.Errorf("migrations line: %q", l)
	}

	code, out, stderr := runCLI(t, env, "migrate")
	if code != exitOK {
		t.Fatalf("migrate: code %d: %s", code, stderr)
	}
	var want string
	for _, v := range migrations.Versions() {
		want += "applied " + v + "\n"
	}
	if out != want {
		t.Errorf("migrate printed %q, want %q", out, want)
	}
	if code, out, _ := runCLI(t, env, "migrate"); code != exitOK || out != "up to date\n" {
		t.Errorf("second migrate: code %d %q", code, out)
	}

	pwFile := filepath.Join(t.TempDir(), "node.password")
	code, out, stderr = runCLI(t, env, "node", "create", "--name", "edge-1", "--endpoint", "vpn.example.net:51820",
		"--address", "10.66.0.1/16", "--dns", "1.1.1.1, 9.9.9.9", "--login-password-file", pwFile)
	if code != exitOK {
		t.Fatalf("node create: code %d: %s", code, stderr)
	}
	nodeID := strings.TrimSpace(out)
	if !parse.IsUUID(nodeID) {
		t.Fatalf("node create printed %q, want a UUID", out)
	}
	role := "waylume_node_" + strings.ReplaceAll(nodeID, "-", "")
	if !strings.Contains(stderr, "login role "+role) {
		t.Errorf("node create stderr %q", stderr)
	}
	if st, err := os.Stat(pwFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("password file: %v", err)
	}
	pw, _ := os.ReadFile(pwFile)
	if strings.Contains(out+stderr, strings.TrimSpace(string(pw))) {
		t.Error("the password is printed although it went to a file")
	}
	// Duplicate names and bad input fail with a clear message.
	if code, _, stderr := runCLI(t, env, "node", "create", "--name", "edge-1", "--endpoint", "x:1", "--address", "10.67.0.1/16"); code != exitFail || !strings.Contains(stderr, "duplicate") {
		t.Errorf("duplicate node: code %d %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, env, "node", "create", "--name", "e2", "--endpoint", "x:1", "--address", "10.67.0.1"); code != exitConfig ||
		stderr != "waylume-node: invalid --address \"10.67.0.1\": want the node's address with the pool prefix, e.g. 10.8.0.1/16\n" {
		t.Errorf("bad address: code %d %q", code, stderr)
	}

	var dns []string
	var address string
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, "SELECT address::text, array(SELECT host(d) FROM unnest(dns) d) FROM waylume.nodes WHERE id = $1", nodeID).Scan(&address, &dns); err != nil {
		t.Fatal(err)
	}
	if address != "10.66.0.1/16" || strings.Join(dns, ",") != "1.1.1.1,9.9.9.9" {
		t.Errorf("node row: address %s dns %v", address, dns)
	}
	var verifier string
	if err := conn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role).Scan(&verifier); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(verifier, "SCRAM-SHA-256$4096:") {
		t.Errorf("stored password is not a SCRAM verifier: %.20q", verifier)
	}

	// check with the service credentials and the node id: every control
	// plane line passes.
	env["WAYLUME_NODE_ID"] = nodeID
	code, out, _ = runCLI(t, env, "check")
	for _, name := range []string{"database", "migrations", "node", "events", "publication"} {
		if l := checkLine(t, out, name); !strings.HasPrefix(l, "ok") {
			t.Errorf("check %s: %q", name, l)
		}
	}
	if strings.Contains(out, "FAIL") != (code == exitFail) {
		t.Errorf("exit code %d does not match the lines:\n%s", code, out)
	}
	if l := checkLine(t, out, "migrations"); !strings.Contains(l, "4 of 4") && !strings.Contains(l, "applied") {
		t.Errorf("migrations line %q", l)
	}

	// As the node's own login role (RLS): the node row is visible.
	_, out, _ = runCLI(t, map[string]string{"WAYLUME_DATABASE_URL": db.URLAs(role), "WAYLUME_NODE_ID": nodeID}, "check")
	for _, name := range []string{"database", "migrations", "node", "events", "publication"} {
		if l := checkLine(t, out, name); !strings.HasPrefix(l, "ok") {
			t.Errorf("check as the node: %q", l)
		}
	}
	// Another node's id is invisible to this node.
	other := strings.TrimSpace(func() string {
		_, o, _ := runCLI(t, map[string]string{"WAYLUME_DATABASE_URL": db.URL}, "node", "create", "--name", "edge-2", "--endpoint", "b:1", "--address", "10.77.0.1/16")
		return o
	}())
	_, out, _ = runCLI(t, map[string]string{"WAYLUME_DATABASE_URL": db.URLAs(role), "WAYLUME_NODE_ID": other}, "check")
	if l := checkLine(t, out, "node"); !strings.HasPrefix(l, "FAIL") {
		t.Errorf("check as node 1 for node 2: %q", l)
	}

	// A publication that lost a table is reported, with the fix.
	sqlExec(t, db.URL, "ALTER PUBLICATION supabase_realtime DROP TABLE waylume.peers")
	code, out, _ = runCLI(t, env, "check")
	if l := checkLine(t, out, "publication"); !strings.HasPrefix(l, "FAIL") || !strings.Contains(l, "waylume.peers not published") {
		t.Errorf("publication line: %q", l)
	}
	if code != exitFail {
		t.Errorf("check exit code %d with a failed line", code)
	}

	// The generated password works with SCRAM authentication: require it
	// for this role only, then log in with and without it.
	hba := filepath.Join(pgtest.Current(t).Dir, "data", "pg_hba.conf")
	orig, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.WriteFile(hba, orig, 0o600)
		sqlExec(t, db.URL, "SELECT pg_reload_conf()")
	})
	if err := os.WriteFile(hba, []byte("local all "+role+" scram-sha-256\n"+string(orig)), 0o600); err != nil {
		t.Fatal(err)
	}
	sqlExec(t, db.URL, "SELECT pg_reload_conf()")
	login := func(password string) error {
		cfg, err := pgx.ParseConfig(db.URLAs(role))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Password = password
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for login("wrong-password") == nil { // the reload is asynchronous
		if time.Now().After(deadline) {
			t.Fatal("the server still accepts a wrong password after the hba reload")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := login(strings.TrimSpace(string(pw))); err != nil {
		t.Errorf("login with the generated password: %v", err)
	}

	// node login prints the role and, without a file, the password once.
	code, out, _ = runCLI(t, map[string]string{"WAYLUME_DATABASE_URL": db.URL}, "node", "login", "--node-id", nodeID)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK || len(lines) != 2 || lines[0] != role || len(lines[1]) < 24 {
		t.Errorf("node login: code %d out %q", code, out)
	} else if err := login(lines[1]); err != nil {
		t.Errorf("login with the reset password: %v", err)
	}
}

func TestMigratePrint(t *testing.T) {
	code, out, _ := runCLI(t, nil, "migrate", "--print")
	if code != exitOK {
		t.Fatal(code)
	}
	for _, v := range migrations.Versions() {
		if !strings.Contains(out, "-- "+v+".sql\n") {
			t.Errorf("--print lacks %s", v)
		}
	}
	// The printed SQL applies as one psql script.
	db := pgtest.New(t)
	sqlExec(t, db.URL, out)
	env := map[string]string{"WAYLUME_DATABASE_URL": db.URL}
	if code, out, _ := runCLI(t, env, "migrate"); code != exitOK || out != "up to date\n" {
		t.Errorf("migrate after the printed SQL: code %d %q", code, out)
	}
}

func TestCheckWithoutDatabase(t *testing.T) {
	code, out, _ := runCLI(t, nil, "check")
	if code != exitFail {
		t.Errorf("code %d", code)
	}
	if l := checkLine(t, out, "database"); !strings.Contains(l, "WAYLUME_DATABASE_URL not set") {
		t.Errorf("database line %q", l)
	}
	// Unreachable server: one FAIL line, not a crash or a hang.
	dir := t.TempDir()
	code, out, _ = runCLI(t, map[string]string{"WAYLUME_DATABASE_URL": "postgres://x@/db?host=" + dir + "&connect_timeout=2"}, "check")
	if l := checkLine(t, out, "database"); code != exitFail || !strings.HasPrefix(l, "FAIL") {
		t.Errorf("unreachable: code %d %q", code, l)
	}
}
