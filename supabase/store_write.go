package supabase

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/waylume/waylume-node/events"
)

// WriteStatus records one flush: usage deltas and status rows, in one
// transaction.
//
// The usage rows are one flush of the node: they are added to their
// peers' bucket rows by waylume.record_usage, under the period (earliest
// PeriodStart, latest PeriodEnd]. The database applies a flush at most once
// (keyed by that period end), so retrying a batch whose commit was lost
// adds nothing twice. Usage of peers deleted or moved to another node
// meanwhile is kept (billing); usage of a peer that was never the node's,
// or a period ending in the future, is refused.
//
// Status rows carry absolute values; rows of peers that no longer exist
// or are no longer the node's are skipped and never fail the batch.
//
// A batch the database refuses for good (row level security, a constraint)
// is rolled back whole and its error matches events.ErrRefused.
func (s *Store) WriteStatus(ctx context.Context, nodeID string, usage []events.Usage, status []events.PeerStatus) error {
	if len(usage) == 0 && len(status) == 0 {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := writeUsage(ctx, tx, usage); err != nil {
			return err
		}
		return writeStatus(ctx, tx, nodeID, status)
	})
	if err != nil {
		return opError("write status", fmt.Errorf("%d usage, %d status rows: %w", len(usage), len(status), err))
	}
	return nil
}

func writeUsage(ctx context.Context, tx pgx.Tx, usage []events.Usage) error {
	if len(usage) == 0 {
		return nil
	}
	// Times are cut to the microseconds the database keeps, so that the
	// period end of a retried batch compares equal to the one recorded.
	start, end := usage[0].PeriodStart, usage[0].PeriodEnd
	ids := make([]string, len(usage))
	ups, downs := make([]int64, len(usage)), make([]int64, len(usage))
	for i, u := range usage {
		if u.PeriodStart.Before(start) {
			start = u.PeriodStart
		}
		if u.PeriodEnd.After(end) {
			end = u.PeriodEnd
		}
		ids[i], ups[i], downs[i] = u.PeerID, u.UploadBytes, u.DownloadBytes
	}
	var applied bool
	err := tx.QueryRow(ctx, `SELECT waylume.record_usage($1, $2, $3::uuid[], $4::bigint[], $5::bigint[])`,
		start.Truncate(time.Microsecond), end.Truncate(time.Microsecond), uuidParam(ids), ups, downs).Scan(&applied)
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	return nil
}

// statusUpdate writes a flush's status rows where they exist, and only
// when something changed: no dead tuples, no WAL for idle peers. Every row
// a flush sends exists and changed, but a new peer's, so it is mostly the
// only statement; when it updated fewer rows than it was given, the rest
// are new (statusInsert) or unchanged (skipped). Cheaper than INSERT ...
// ON CONFLICT DO UPDATE, which takes the speculative insertion path and
// writes a lock record for every row. Rows are absolute values, so
// splitting the write in two statements cannot count anything twice.
// updated_at = now() spares the touch trigger's call per row (it fires
// only for other values).
const statusUpdate = `UPDATE waylume.peer_status s SET state = u.state, reason = u.reason, last_handshake_at = u.hs,
		endpoint = u.endpoint, upload_bytes = u.up, download_bytes = u.down, rx_baseline = u.rxb,
		tx_baseline = u.txb, counter_epoch = u.epoch, applied_at = u.applied, updated_at = now()
	FROM (SELECT u.peer_id, u.state, u.reason, u.hs, nullif(u.endpoint, '') AS endpoint, u.up, u.down, u.rxb, u.txb,
			u.epoch, coalesce(u.applied, now()) AS applied
		FROM unnest($2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::bigint[], $8::bigint[],
			$9::bigint[], $10::bigint[], $11::text[], $12::timestamptz[])
			AS u (peer_id, state, reason, hs, endpoint, up, down, rxb, txb, epoch, applied)) u
	WHERE s.peer_id = u.peer_id AND s.node_id = $1::uuid
	  AND (s.state, s.reason, s.last_handshake_at, s.endpoint, s.upload_bytes, s.download_bytes,
	       s.rx_baseline, s.tx_baseline, s.counter_epoch, s.applied_at)
	      IS DISTINCT FROM
	      (u.state, u.reason, u.hs, u.endpoint, u.up, u.down, u.rxb, u.txb, u.epoch, u.applied)`

// statusInsert adds the rows statusUpdate did not find; the join drops
// peers that are gone or another node's.
const statusInsert = `INSERT INTO waylume.peer_status (peer_id, node_id, state, reason, last_handshake_at, endpoint,
		upload_bytes, download_bytes, rx_baseline, tx_baseline, counter_epoch, applied_at)
	SELECT u.peer_id, p.node_id, u.state, u.reason, u.hs, nullif(u.endpoint, ''), u.up, u.down, u.rxb, u.txb,
		u.epoch, coalesce(u.applied, now())
	FROM unnest($2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::bigint[], $8::bigint[],
		$9::bigint[], $10::bigint[], $11::text[], $12::timestamptz[])
		AS u (peer_id, state, reason, hs, endpoint, up, down, rxb, txb, epoch, applied)
	JOIN waylume.peers p ON p.id = u.peer_id AND p.node_id = $1::uuid
	WHERE NOT EXISTS (SELECT 1 FROM waylume.peer_status s WHERE s.peer_id = u.peer_id)
	ON CONFLICT (peer_id) DO NOTHING`

// statusChunk bounds the rows of one status statement. pgx keeps a
// statement's encoded parameters on its connection until that
// connection's next statement: one statement of 10,000 rows would leave
// ~8 MB on every pooled connection that ran one. The chunks share the
// flush's transaction, so they commit together as one statement would.
const statusChunk = 1000

func writeStatus(ctx context.Context, tx pgx.Tx, nodeID string, status []events.PeerStatus) error {
	if len(status) == 0 {
		return nil
	}
	// One row per peer (the last wins): ON CONFLICT DO UPDATE may not
	// touch a row twice in one statement.
	last := make(map[string]int, len(status))
	for i, st := range status {
		last[st.PeerID] = i
	}
	rows := make([]events.PeerStatus, 0, len(last))
	for i, st := range status {
		if last[st.PeerID] == i {
			rows = append(rows, st)
		}
	}
	for lo := 0; lo < len(rows); lo += statusChunk {
		if err := writeStatusRows(ctx, tx, nodeID, rows[lo:min(lo+statusChunk, len(rows))]); err != nil {
			return err
		}
	}
	return nil
}

func writeStatusRows(ctx context.Context, tx pgx.Tx, nodeID string, rows []events.PeerStatus) error {
	n := len(rows)
	var (
		ids, states, reasons = make([]string, n), make([]string, n), make([]string, n)
		endpoints, epochs    = make([]string, n), make([]string, n)
		handshakes, applied  = make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n)
		ups, downs, rxb, txb = make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	)
	for i, st := range rows {
		ids[i], states[i], reasons[i], endpoints[i], epochs[i] = st.PeerID, st.State, st.Reason, st.Endpoint, st.CounterEpoch
		handshakes[i] = pgtype.Timestamptz{Time: st.LastHandshakeAt, Valid: !st.LastHandshakeAt.IsZero()}
		applied[i] = pgtype.Timestamptz{Time: st.AppliedAt, Valid: !st.AppliedAt.IsZero()}
		ups[i], downs[i], rxb[i], txb[i] = st.UploadBytes, st.DownloadBytes, st.RxBaseline, st.TxBaseline
	}
	args := []any{nodeID, uuidParam(ids), states, reasons, handshakes, endpoints, ups, downs, rxb, txb, epochs, applied}
	tag, err := tx.Exec(ctx, statusUpdate, args...)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if tag.RowsAffected() == int64(n) {
		return nil
	}
	// A peer deleted between the join and the foreign key check fails
	// the insert (23503): retry it, the join then skips the peer.
	for attempt := 0; attempt < 3; attempt++ {
		err = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
			_, err := sp.Exec(ctx, statusInsert, args...)
			return err
		})
		if !isForeignKeyViolation(err) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return nil
}

// uuidParam sends peer ids in binary, sparing the server a text parse of
// every element; an id that is not a UUID goes as text, for the server to
// refuse as it would any.
func uuidParam(ids []string) any {
	out := make([]pgtype.UUID, len(ids))
	for i, id := range ids {
		if err := out[i].Scan(id); err != nil {
			return ids
		}
	}
	return out
}
