package supabase

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/waylume/waylume-node/events"
)

// WriteStatus appends usage rows and upserts status rows in one
// transaction.
//
// Usage is idempotent on (node_id, peer_id, period_end): retrying a batch
// whose commit was lost inserts nothing twice. Usage of peers deleted
// meanwhile is kept (billing); usage naming a peer that now belongs to
// another node is dropped, since the node may not write for it.
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
		if err := writeUsage(ctx, tx, nodeID, usage); err != nil {
			return err
		}
		return writeStatus(ctx, tx, nodeID, status)
	})
	if err != nil {
		return opError("write status", fmt.Errorf("%d usage, %d status rows: %w", len(usage), len(status), err))
	}
	return nil
}

func writeUsage(ctx context.Context, tx pgx.Tx, nodeID string, usage []events.Usage) error {
	if len(usage) == 0 {
		return nil
	}
	// The key (node_id, peer_id, period_end) is inserted once: the first
	// row of a key in the batch wins, and keys already in the table (a
	// retried batch whose commit was lost) are left out. Plain INSERT, not
	// ON CONFLICT, which would take the costly speculative insertion path
	// for every row. Times are cut to the microseconds the database keeps,
	// so keys compare alike here and there whatever the wire format.
	type key struct {
		peer [16]byte
		end  int64
	}
	var (
		seen = make(map[key]bool, len(usage))
		keys = make([]key, 0, len(usage))
		kept = make([]events.Usage, 0, len(usage))
		ends []time.Time
	)
	endSeen := map[int64]bool{}
	for _, u := range usage {
		u.PeriodStart, u.PeriodEnd = u.PeriodStart.Truncate(time.Microsecond), u.PeriodEnd.Truncate(time.Microsecond)
		var id pgtype.UUID
		if err := id.Scan(u.PeerID); err != nil {
			return fmt.Errorf("usage: peer id %q: %w", u.PeerID, err)
		}
		k := key{id.Bytes, u.PeriodEnd.UnixMicro()}
		if seen[k] {
			continue
		}
		seen[k] = true
		keys, kept = append(keys, k), append(kept, u)
		if !endSeen[k.end] {
			endSeen[k.end] = true
			ends = append(ends, u.PeriodEnd)
		}
	}
	// Keys already written: one range of the key index per period_end in
	// the batch (a flush has one), whatever the size of the node's history.
	rows, err := tx.Query(ctx, `SELECT peer_id, period_end FROM waylume.peer_usage
		WHERE node_id = $1::uuid AND period_end = ANY ($2::timestamptz[])`, nodeID, ends)
	if err != nil {
		return fmt.Errorf("usage: existing keys: %w", err)
	}
	var (
		peer pgtype.UUID
		end  time.Time
	)
	_, err = pgx.ForEachRow(rows, []any{&peer, &end}, func() error {
		delete(seen, key{peer.Bytes, end.UnixMicro()})
		return nil
	})
	if err != nil {
		return fmt.Errorf("usage: existing keys: %w", err)
	}
	var (
		ids          []pgtype.UUID
		starts, pend []time.Time
		ups, downs   []int64
	)
	for i, u := range kept {
		if !seen[keys[i]] {
			continue // already in the table
		}
		ids, starts, pend = append(ids, pgtype.UUID{Bytes: keys[i].peer, Valid: true}), append(starts, u.PeriodStart), append(pend, u.PeriodEnd)
		ups, downs = append(ups, u.UploadBytes), append(downs, u.DownloadBytes)
	}
	if len(ids) == 0 {
		return nil
	}
	_, err = tx.Exec(ctx, `WITH f AS MATERIALIZED (SELECT waylume.foreign_peers($1::uuid, $2::uuid[]) AS ids)
		INSERT INTO waylume.peer_usage (node_id, peer_id, period_start, period_end, upload_bytes, download_bytes)
		SELECT $1::uuid, u.peer_id, u.ps, u.pe, u.up, u.down
		FROM unnest($2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::bigint[], $6::bigint[]) AS u (peer_id, ps, pe, up, down), f
		WHERE u.peer_id <> ALL (f.ids)`, nodeID, ids, starts, pend, ups, downs)
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	return nil
}

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
	var (
		ids, states, reasons, endpoints, epochs []string
		handshakes, applied                     []pgtype.Timestamptz
		ups, downs, rxb, txb                    []int64
	)
	for i, st := range status {
		if last[st.PeerID] != i {
			continue
		}
		ids = append(ids, st.PeerID)
		states = append(states, st.State)
		reasons = append(reasons, st.Reason)
		endpoints = append(endpoints, st.Endpoint)
		epochs = append(epochs, st.CounterEpoch)
		handshakes = append(handshakes, pgtype.Timestamptz{Time: st.LastHandshakeAt, Valid: !st.LastHandshakeAt.IsZero()})
		applied = append(applied, pgtype.Timestamptz{Time: st.AppliedAt, Valid: !st.AppliedAt.IsZero()})
		ups = append(ups, st.UploadBytes)
		downs = append(downs, st.DownloadBytes)
		rxb = append(rxb, st.RxBaseline)
		txb = append(txb, st.TxBaseline)
	}
	// A peer deleted between the join and the foreign key check fails
	// the statement (23503): retry it, the join then skips the peer.
	// Existing rows are updated (only when something changed: no dead
	// tuples for idle peers), missing ones inserted; cheaper than
	// INSERT ... ON CONFLICT DO UPDATE, which takes the speculative
	// insertion path for every row. The missing rows are found by a hashed
	// EXCEPT against the node's status rows rather than one index probe per
	// row; the join drops peers that are gone or another node's.
	// updated_at = now() spares the touch trigger's call per row (it fires
	// only for other values).
	const upsert = `WITH u AS MATERIALIZED (
			SELECT u.peer_id, u.state, u.reason, u.hs, nullif(u.endpoint, '') AS endpoint, u.up, u.down, u.rxb, u.txb,
				u.epoch, coalesce(u.applied, now()) AS applied
			FROM unnest($2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::bigint[], $8::bigint[],
				$9::bigint[], $10::bigint[], $11::text[], $12::timestamptz[])
				AS u (peer_id, state, reason, hs, endpoint, up, down, rxb, txb, epoch, applied)
		), upd AS (
			UPDATE waylume.peer_status s SET state = u.state, reason = u.reason, last_handshake_at = u.hs,
				endpoint = u.endpoint, upload_bytes = u.up, download_bytes = u.down, rx_baseline = u.rxb,
				tx_baseline = u.txb, counter_epoch = u.epoch, applied_at = u.applied, updated_at = now()
			FROM u
			WHERE s.peer_id = u.peer_id AND s.node_id = $1::uuid
			  AND (s.state, s.reason, s.last_handshake_at, s.endpoint, s.upload_bytes, s.download_bytes,
			       s.rx_baseline, s.tx_baseline, s.counter_epoch, s.applied_at)
			      IS DISTINCT FROM
			      (u.state, u.reason, u.hs, u.endpoint, u.up, u.down, u.rxb, u.txb, u.epoch, u.applied)
			RETURNING 1
		), missing AS (
			SELECT peer_id FROM u EXCEPT SELECT s.peer_id FROM waylume.peer_status s WHERE s.node_id = $1::uuid
		)
		INSERT INTO waylume.peer_status (peer_id, node_id, state, reason, last_handshake_at, endpoint,
			upload_bytes, download_bytes, rx_baseline, tx_baseline, counter_epoch, applied_at)
		SELECT u.peer_id, p.node_id, u.state, u.reason, u.hs, u.endpoint, u.up, u.down, u.rxb, u.txb, u.epoch, u.applied
		FROM missing m JOIN u ON u.peer_id = m.peer_id JOIN waylume.peers p ON p.id = m.peer_id AND p.node_id = $1::uuid
		ON CONFLICT (peer_id) DO NOTHING`
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		err = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
			_, err := sp.Exec(ctx, upsert, nodeID, ids, states, reasons, handshakes, endpoints, ups, downs, rxb, txb, epochs, applied)
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
