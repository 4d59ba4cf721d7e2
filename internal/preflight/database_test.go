package preflight

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/waylume/waylume-node/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// Through the transaction pooler LISTEN cannot work: check fails the
// event source line and names Realtime as the fix.
func TestCheckListenOnTransactionPooler(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	r := checkListen(ctx, conn, "postgres://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres")
	if r.OK || !strings.Contains(r.Detail, "transaction pooler") || !strings.Contains(r.Fix, "Realtime is required") {
		t.Errorf("transaction pooler: %+v", r)
	}
	if r := checkListen(ctx, conn, db.URL); !r.OK {
		t.Errorf("direct connection: %+v", r)
	}
}
