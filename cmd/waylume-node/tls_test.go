package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// writeCA writes a self-signed CA certificate, as a Supabase project's
// CA download is, and returns its path.
func writeCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDatabaseTLSLevel(t *testing.T) {
	ca := writeCA(t)
	tests := []struct {
		url  string
		want tlsLevel
	}{
		{"postgres://u@db.example/x", tlsOff}, // pgx's default prefer
		{"postgres://u@db.example/x?sslmode=prefer", tlsOff},
		{"postgres://u@db.example/x?sslmode=allow", tlsOff},
		{"postgres://u@db.example/x?sslmode=disable", tlsOff},
		{"host=db.example user=u sslmode=disable", tlsOff},
		{"postgres://u@db.example/x?sslmode=require", tlsNoVerify},
		{"host=db.example user=u sslmode=require", tlsNoVerify},
		{"postgres://u@db.example/x?sslmode=verify-ca&sslrootcert=" + ca, tlsVerifyCA},
		{"postgres://u@db.example/x?sslmode=require&sslrootcert=" + ca, tlsVerifyCA}, // libpq: require with a CA is verify-ca
		{"postgres://u@db.example/x?sslmode=verify-full&sslrootcert=" + ca, tlsVerifyFull},
		{"postgres://u@db.example/x?sslrootcert=system", tlsVerifyFull},
		{"postgres://u@localhost/x", tlsLocal},
		{"postgres://u@127.0.0.1/x?sslmode=disable", tlsLocal},
		{"postgres://u@[::1]:5432/x", tlsLocal},
		{"postgres://u@/x?host=/run/postgresql", tlsLocal},
		{"host=/tmp user=u", tlsLocal},
		// Several hosts: the weakest remote one counts.
		{"postgres://u@localhost,db.example/x?sslmode=prefer", tlsOff},
		{"postgres://u@localhost,db.example/x?sslmode=require", tlsNoVerify},
	}
	for _, tc := range tests {
		pc, err := pgconn.ParseConfig(tc.url)
		if err != nil {
			t.Fatalf("%s: %v", tc.url, err)
		}
		if got := databaseTLS(pc); got != tc.want {
			t.Errorf("%s: level %d, want %d", tc.url, got, tc.want)
		}
	}
}

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
	ca := writeCA(t)
	for _, tc := range []struct{ url, prefix string }{
		{"postgres://u@192.0.2.1/x?sslmode=require", "warn"},
		{"postgres://u@192.0.2.1/x?sslmode=verify-ca&sslrootcert=" + ca, "warn"},
		{"postgres://u@192.0.2.1/x?sslmode=verify-full&sslrootcert=" + ca, "ok"},
		{"postgres://u@/x?host=/nonexistent", "ok"},
	} {
		r := checkDatabaseTLS(tc.url)
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
