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
	return opError(fmt.Sprintf("write status (%d usage, %d status rows)", len(usage), len(status)), err)
}

func writeUsage(ctx context.Context, tx pgx.Tx, nodeID string, usage []events.Usage) error {
	if len(usage) == 0 {
		return nil
	}
	n := len(usage)
	ids := make([]string, n)
	starts, ends := make([]time.Time, n), make([]time.Time, n)
	ups, downs := make([]int64, n), make([]int64, n)
	for i, u := range usage {
		ids[i], starts[i], ends[i], ups[i], downs[i] = u.PeerID, u.PeriodStart, u.PeriodEnd, u.UploadBytes, u.DownloadBytes
	}
	_, err := tx.Exec(ctx, `WITH f AS MATERIALIZED (SELECT waylume.foreign_peers($1::uuid, $2::uuid[]) AS ids)
		INSERT INTO waylume.peer_usage (node_id, peer_id, period_start, period_end, upload_bytes, download_bytes)
		SELECT $1::uuid, u.peer_id, u.ps, u.pe, u.up, u.down
		FROM unnest($2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::bigint[], $6::bigint[]) AS u (peer_id, ps, pe, up, down), f
		WHERE u.peer_id <> ALL (f.ids)
		ON CONFLICT (node_id, peer_id, period_end) DO NOTHING`, nodeID, ids, starts, ends, ups, downs)
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
	// The join drops peers that are gone or another node's. A peer
	// deleted between the join and the foreign key check fails the
	// statement (23503): retry it, the join then skips the peer.
	const upsert = `INSERT INTO waylume.peer_status AS s (peer_id, node_id, state, reason, last_handshake_at, endpoint,
			upload_bytes, download_bytes, rx_baseline, tx_baseline, counter_epoch, applied_at)
		SELECT u.peer_id, p.node_id, u.state, u.reason, u.hs, nullif(u.endpoint, ''), u.up, u.down, u.rxb, u.txb,
			u.epoch, coalesce(u.applied, now())
		FROM unnest($2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::bigint[], $8::bigint[],
			$9::bigint[], $10::bigint[], $11::text[], $12::timestamptz[])
			AS u (peer_id, state, reason, hs, endpoint, up, down, rxb, txb, epoch, applied)
		JOIN waylume.peers p ON p.id = u.peer_id AND p.node_id = $1::uuid
		ON CONFLICT (peer_id) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason,
			last_handshake_at = EXCLUDED.last_handshake_at, endpoint = EXCLUDED.endpoint,
			upload_bytes = EXCLUDED.upload_bytes, download_bytes = EXCLUDED.download_bytes,
			rx_baseline = EXCLUDED.rx_baseline, tx_baseline = EXCLUDED.tx_baseline,
			counter_epoch = EXCLUDED.counter_epoch, applied_at = EXCLUDED.applied_at
		-- Unchanged rows are not rewritten (no dead tuples every flush).
		WHERE (s.state, s.reason, s.last_handshake_at, s.endpoint, s.upload_bytes, s.download_bytes,
		       s.rx_baseline, s.tx_baseline, s.counter_epoch, s.applied_at)
		      IS DISTINCT FROM
		      (EXCLUDED.state, EXCLUDED.reason, EXCLUDED.last_handshake_at, EXCLUDED.endpoint, EXCLUDED.upload_bytes,
		       EXCLUDED.download_bytes, EXCLUDED.rx_baseline, EXCLUDED.tx_baseline, EXCLUDED.counter_epoch, EXCLUDED.applied_at)`
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
