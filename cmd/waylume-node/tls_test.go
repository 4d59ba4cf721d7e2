package main

import (
	"strings"
	"testing"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/preflight"
)

// A remote database URL without TLS is refused before connecting, by every
// subcommand that takes one: exit 2, one line naming sslmode and the fix.
func TestDatabaseURLWithoutTLSRefused(t *testing.T) {
	for _, args := range [][]string{
		{"run"}, {"migrate"}, {"check"}, {"status"},
		{"node", "create", "--name", "n", "--endpoint", "n:1", "--address", "10.9.0.1/24"},
		{"node", "login", "--node-id", goodNode},
		{"peer", "config", goodNode},
	} {
		for _, url := range []string{"postgres://u:s3cret@192.0.2.1:5432/x", "postgres://u:s3cret@db.example/x?sslmode=prefer",
			"host=192.0.2.1 user=u password=s3cret sslmode=disable"} {
			env := map[string]string{"WAYLUME_DATABASE_URL": url, "WAYLUME_NODE_ID": goodNode}
			code, stdout, stderr := runCLI(t, env, args...)
			if code != exitConfig || stdout != "" {
				t.Errorf("%v %q: code %d stdout %q, want %d and nothing", args, url, code, stdout, exitConfig)
			}
			if !strings.Contains(stderr, "WAYLUME_DATABASE_URL") || !strings.Contains(stderr, "sslmode=verify-full") ||
				!strings.Contains(stderr, "sslmode=require") || strings.Count(stderr, "\n") != 1 {
				t.Errorf("%v %q: stderr %q, want one line naming the setting, sslmode and the fix", args, url, stderr)
			}
			if strings.Contains(stderr, "s3cret") {
				t.Errorf("%v: the password is echoed: %q", args, stderr)
			}
		}
	}
}

// check passes verify-full silently and warns (a visible line, not a
// failure) for anything weaker.
func TestCheckWarnsUnlessVerifyFull(t *testing.T) {
	ca := dbfix.CA(t)
	for _, tc := range []struct{ url, prefix string }{
		{"postgres://u@192.0.2.1/x?sslmode=require", "warn"},
		{"postgres://u@192.0.2.1/x?sslmode=verify-ca&sslrootcert=" + ca, "warn"},
		{"postgres://u@192.0.2.1/x?sslmode=verify-full&sslrootcert=" + ca, "ok"},
		{"postgres://u@/x?host=/nonexistent", "ok"},
	} {
		r := preflight.DatabaseTLS(tc.url)
		if !r.OK {
			t.Errorf("%s: %+v is a failure", tc.url, r)
		}
		var b strings.Builder
		printCheck(&b, r)
		line := b.String()
		if !strings.HasPrefix(line, tc.prefix+" ") || strings.Contains(line, "FAIL") {
			t.Errorf("%s: line %q, want %s", tc.url, line, tc.prefix)
		}
		if tc.prefix == "warn" && !strings.Contains(line, "verify-full") {
			t.Errorf("%s: warning %q does not name the fix", tc.url, line)
		}
	}
	// Through the command: the line is printed although the server is
	// unreachable, and a warning alone does not fail check.
	code, out, _ := runCLI(t, map[string]string{"WAYLUME_DATABASE_URL": "postgres://u@192.0.2.1/x?sslmode=require&connect_timeout=1"}, "check")
	if !strings.Contains(out, "\nwarn  database_tls ") || code != exitFail {
		t.Errorf("check: code %d\n%s", code, out)
	}
}
