package supabase_test

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/supabase"
)

func TestDatabaseTLSLevel(t *testing.T) {
	ca := dbfix.CA(t)
	tests := []struct {
		url  string
		want supabase.TLSLevel
	}{
		{"postgres://u@db.example/x", supabase.TLSOff}, // pgx's default prefer
		{"postgres://u@db.example/x?sslmode=prefer", supabase.TLSOff},
		{"postgres://u@db.example/x?sslmode=allow", supabase.TLSOff},
		{"postgres://u@db.example/x?sslmode=disable", supabase.TLSOff},
		{"host=db.example user=u sslmode=disable", supabase.TLSOff},
		{"postgres://u@db.example/x?sslmode=require", supabase.TLSNoVerify},
		{"host=db.example user=u sslmode=require", supabase.TLSNoVerify},
		{"postgres://u@db.example/x?sslmode=verify-ca&sslrootcert=" + ca, supabase.TLSVerifyCA},
		{"postgres://u@db.example/x?sslmode=require&sslrootcert=" + ca, supabase.TLSVerifyCA}, // libpq: require with a CA is verify-ca
		{"postgres://u@db.example/x?sslmode=verify-full&sslrootcert=" + ca, supabase.TLSVerifyFull},
		{"postgres://u@db.example/x?sslrootcert=system", supabase.TLSVerifyFull},
		{"postgres://u@localhost/x", supabase.TLSLocal},
		{"postgres://u@127.0.0.1/x?sslmode=disable", supabase.TLSLocal},
		{"postgres://u@[::1]:5432/x", supabase.TLSLocal},
		{"postgres://u@/x?host=/run/postgresql", supabase.TLSLocal},
		{"host=/tmp user=u", supabase.TLSLocal},
		// Several hosts: the weakest remote one counts.
		{"postgres://u@localhost,db.example/x?sslmode=prefer", supabase.TLSOff},
		{"postgres://u@localhost,db.example/x?sslmode=require", supabase.TLSNoVerify},
	}
	for _, tc := range tests {
		pc, err := pgconn.ParseConfig(tc.url)
		if err != nil {
			t.Fatalf("%s: %v", tc.url, err)
		}
		if got := supabase.DatabaseTLS(pc); got != tc.want {
			t.Errorf("%s: level %d, want %d", tc.url, got, tc.want)
		}
	}
}
