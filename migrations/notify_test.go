package migrations_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/testkit"
)

// fillNotifyQueue fills the cluster's NOTIFY queue until a commit fails
// with "too many notifications" (SQLSTATE 54000): a listener that never
// reads (it sits in an open transaction) holds every notification. It
// returns a func releasing the listener. PostgreSQL 15 has no setting for
// the queue's size: this writes its full 8 GB (about 40 s here).
func fillNotifyQueue(t *testing.T, url string) (release func()) {
	t.Helper()
	ctx := context.Background()
	stuck := connect(t, url)
	if _, err := stuck.Exec(ctx, `LISTEN waylume_fill`); err != nil {
		t.Fatal(err)
	}
	tx, err := stuck.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		filler := connect(t, url)
		wg.Go(func() {
			for {
				_, err := filler.Exec(ctx, `SELECT count(pg_notify('waylume_fill', i::text || repeat('x', 7900))) FROM generate_series(1, 10000) i`)
				if err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "54000" {
			t.Fatalf("filling the NOTIFY queue ended with %v, want SQLSTATE 54000 (queue full)", err)
		}
	}
	return func() { tx.Rollback(ctx); stuck.Close(ctx) }
}

func queueUsage(t *testing.T, conn *pgx.Conn) float64 {
	t.Helper()
	var u float64
	if err := conn.QueryRow(context.Background(), `SELECT pg_notification_queue_usage()`).Scan(&u); err != nil {
		t.Fatal(err)
	}
	return u
}

// Any login can fill the NOTIFY queue; the peers and nodes triggers then
// notify nothing, and an app backend's writes still commit instead of
// failing fleet-wide. Once the queue drains, writes notify again.
func TestFullNotifyQueueDoesNotFailWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("writes the NOTIFY queue's 8 GB")
	}
	ctx := context.Background()
	db := dbfix.Migrated(t)
	node := dbfix.CreateNode(t, db, "notify", "10.60.0.1/24")
	peer := dbfix.AddPeers(t, db, node, 1)[0]
	app := connect(t, db.URL)

	release := fillNotifyQueue(t, db.URL)
	released := false
	defer func() {
		if !released {
			release()
		}
	}()
	if u := queueUsage(t, app); u < 0.99 {
		t.Fatalf("queue usage %.3f after filling, want full", u)
	}
	// The control: a plain notification cannot commit now.
	if _, err := app.Exec(ctx, `SELECT pg_notify('waylume_other', 'x')`); err == nil {
		t.Fatal("pg_notify committed on a full queue: the queue is not full")
	}
	var added string
	if err := app.QueryRow(ctx, `INSERT INTO waylume.peers (node_id, public_key) VALUES ($1, `+keySQL+`) RETURNING id::text`, node).Scan(&added); err != nil {
		t.Fatalf("insert with a full NOTIFY queue: %v", err)
	}
	for _, sql := range []string{
		`UPDATE waylume.peers SET download_kbps = 1000 WHERE id = $1`,
		`DELETE FROM waylume.peers WHERE id = $1`,
	} {
		if _, err := app.Exec(ctx, sql, added); err != nil {
			t.Fatalf("%s with a full NOTIFY queue: %v", sql, err)
		}
	}
	if _, err := app.Exec(ctx, `UPDATE waylume.nodes SET mtu = 1380 WHERE id = $1`, node); err != nil {
		t.Fatalf("node update with a full NOTIFY queue: %v", err)
	}

	release()
	released = true
	testkit.Eventually(t, time.Minute, func() error {
		if u := queueUsage(t, app); u > 0.5 {
			return errors.New("NOTIFY queue still filled after the listener left")
		}
		return nil
	})
	nodeListen := connect(t, db.URL)
	if _, err := nodeListen.Exec(ctx, `LISTEN "waylume_node_`+node+`"`); err != nil {
		t.Fatal(err)
	}
	if _, err := app.Exec(ctx, `UPDATE waylume.peers SET upload_kbps = 2000 WHERE id = $1`, peer); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	n, err := nodeListen.WaitForNotification(wctx)
	if err != nil {
		t.Fatalf("no notification once the queue drained: %v", err)
	}
	if want := `{"table" : "peers", "op" : "UPDATE", "id" : "` + peer + `", "node_id" : "` + node + `"}`; n.Payload != want {
		t.Errorf("payload %s, want %s", n.Payload, want)
	}
}
