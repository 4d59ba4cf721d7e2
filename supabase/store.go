package supabase

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/waylume/waylume-node/events"
)

// StoreOptions tunes OpenStore. The zero value is the default.
type StoreOptions struct {
	// MaxConns caps the pool; 0 means 4, so a fleet of nodes fits a
	// small Supabase plan. A pool_max_conns parameter in the URL wins.
	MaxConns int32
	// Lazy skips the connection check: the pool connects on first use, so
	// a database unreachable at start is not an error here (a node that
	// can serve from its saved state opens the store anyway).
	Lazy bool
}

// Store reads the node's desired state and writes what it observed, over
// a small pgx pool. It works through Supabase's transaction pooler too: it
// holds no session state, and the URL's default_query_exec_mode
// (simple_protocol or exec) avoids server-side prepared statements.
type Store struct {
	pool *pgxpool.Pool
}

// OpenStore connects to url and checks the connection, unless opts.Lazy.
func OpenStore(ctx context.Context, url string, opts StoreOptions) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The parse error may quote the URL, password included.
		return nil, opError("open store", errInvalidURL)
	}
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = 4
		if opts.MaxConns > 0 {
			cfg.MaxConns = opts.MaxConns
		}
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "waylume-node"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, opError("open store", err)
	}
	if opts.Lazy {
		return &Store{pool: pool}, nil
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, opError("open store", fmt.Errorf("ping: %w", err))
	}
	return &Store{pool: pool}, nil
}

var errInvalidURL = errors.New("invalid database URL")

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// The node's status is its own last heartbeat's (waylume.node_status).
const nodeColumns = `id::text, name, coalesce(endpoint, ''), listen_port, address, address6,
	array(SELECT host(d) FROM unnest(dns) d), coalesce(mtu, 0),
	coalesce((SELECT s.status FROM waylume.node_status s WHERE s.node_id = nodes.id), status), updated_at`

func scanNode(row pgx.Row) (events.Node, error) {
	var n events.Node
	var a6 *netip.Prefix
	var dns []string
	if err := row.Scan(&n.ID, &n.Name, &n.Endpoint, &n.ListenPort, &n.Address, &a6, &dns, &n.MTU, &n.Status, &n.UpdatedAt); err != nil {
		return n, err
	}
	if a6 != nil {
		n.Address6 = *a6
	}
	for _, d := range dns {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return n, fmt.Errorf("dns %q: %w", d, err)
		}
		n.DNS = append(n.DNS, a)
	}
	return n, nil
}

const peerColumns = `id::text, node_id::text, public_key, coalesce(preshared_key, ''), address, address6,
	allowed_ips, coalesce(persistent_keepalive, 0), coalesce(download_kbps, 0), coalesce(upload_kbps, 0),
	coalesce(quota_bytes, 0), quota_reset_at, expires_at, enabled, created_at, updated_at`

// peerScan holds the scan targets of one peer row, reused across rows.
type peerScan struct {
	p              events.Peer
	a6             *netip.Prefix
	reset, expires pgtype.Timestamptz
	dl, ul, quota  int64
	keepalive      int32
	allowed        []netip.Prefix
}

func (ps *peerScan) targets() []any {
	return []any{&ps.p.ID, &ps.p.NodeID, &ps.p.PublicKey, &ps.p.PresharedKey, &ps.p.Address, &ps.a6,
		&ps.allowed, &ps.keepalive, &ps.dl, &ps.ul, &ps.quota, &ps.reset, &ps.expires, &ps.p.Enabled,
		&ps.p.CreatedAt, &ps.p.UpdatedAt}
}

func (ps *peerScan) peer() events.Peer {
	p := ps.p
	p.Address6 = netip.Prefix{}
	if ps.a6 != nil {
		p.Address6 = *ps.a6
	}
	p.AllowedIPs = ps.allowed
	p.PersistentKeepalive = int(ps.keepalive)
	p.DownloadKbps, p.UploadKbps, p.QuotaBytes = ps.dl, ps.ul, ps.quota
	p.QuotaResetAt, p.ExpiresAt = time.Time{}, time.Time{}
	if ps.reset.Valid {
		p.QuotaResetAt = ps.reset.Time
	}
	if ps.expires.Valid {
		p.ExpiresAt = ps.expires.Time
	}
	ps.a6, ps.allowed = nil, nil
	return p
}

// Snapshot returns the node's row and all its peers as of one moment
// (one REPEATABLE READ, read-only transaction).
func (s *Store) Snapshot(ctx context.Context, nodeID string) (events.Node, []events.Peer, error) {
	const op = "snapshot"
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return events.Node{}, nil, opError(op, err)
	}
	defer tx.Rollback(ctx)
	node, err := scanNode(tx.QueryRow(ctx, `SELECT `+nodeColumns+` FROM waylume.nodes WHERE id = $1`, nodeID))
	if errors.Is(err, pgx.ErrNoRows) {
		return events.Node{}, nil, opError(op, fmt.Errorf("node %s: %w", nodeID, ErrNotFound))
	}
	if err != nil {
		return events.Node{}, nil, opError(op+": node", err)
	}
	rows, err := tx.Query(ctx, `SELECT `+peerColumns+` FROM waylume.peers WHERE node_id = $1`, nodeID)
	if err != nil {
		return events.Node{}, nil, opError(op+": peers", err)
	}
	var peers []events.Peer
	var ps peerScan
	targets := ps.targets()
	for rows.Next() {
		if err := rows.Scan(targets...); err != nil {
			rows.Close()
			return events.Node{}, nil, opError(op+": peers", err)
		}
		peers = append(peers, ps.peer())
	}
	if err := rows.Err(); err != nil {
		return events.Node{}, nil, opError(op+": peers", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return events.Node{}, nil, opError(op, err)
	}
	return node, peers, nil
}

// Node returns the node's row.
func (s *Store) Node(ctx context.Context, nodeID string) (events.Node, error) {
	n, err := scanNode(s.pool.QueryRow(ctx, `SELECT `+nodeColumns+` FROM waylume.nodes WHERE id = $1`, nodeID))
	if errors.Is(err, pgx.ErrNoRows) {
		return n, opError("node", fmt.Errorf("node %s: %w", nodeID, ErrNotFound))
	}
	return n, opError("node "+nodeID, err)
}

// Peer returns peer peerID if it is node nodeID's; ErrNotFound if it is
// absent or another node's.
func (s *Store) Peer(ctx context.Context, nodeID, peerID string) (events.Peer, error) {
	var ps peerScan
	err := s.pool.QueryRow(ctx, `SELECT `+peerColumns+` FROM waylume.peers WHERE id = $1 AND node_id = $2`, peerID, nodeID).Scan(ps.targets()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return events.Peer{}, opError("peer", fmt.Errorf("peer %s of node %s: %w", peerID, nodeID, ErrNotFound))
	}
	if err != nil {
		return events.Peer{}, opError("peer "+peerID, err)
	}
	return ps.peer(), nil
}

// PeerStatuses returns the node's status rows: lifetime totals and the
// counter baselines of the last committed WriteStatus.
func (s *Store) PeerStatuses(ctx context.Context, nodeID string) ([]events.PeerStatus, error) {
	rows, err := s.pool.Query(ctx, `SELECT peer_id::text, node_id::text, state, reason, last_handshake_at,
		coalesce(endpoint, ''), upload_bytes, download_bytes, rx_baseline, tx_baseline, counter_epoch, applied_at
		FROM waylume.peer_status WHERE node_id = $1`, nodeID)
	if err != nil {
		return nil, opError("peer statuses", err)
	}
	defer rows.Close()
	var out []events.PeerStatus
	for rows.Next() {
		var st events.PeerStatus
		var hs, applied pgtype.Timestamptz
		if err := rows.Scan(&st.PeerID, &st.NodeID, &st.State, &st.Reason, &hs, &st.Endpoint, &st.UploadBytes,
			&st.DownloadBytes, &st.RxBaseline, &st.TxBaseline, &st.CounterEpoch, &applied); err != nil {
			return nil, opError("peer statuses", err)
		}
		if hs.Valid {
			st.LastHandshakeAt = hs.Time
		}
		if applied.Valid {
			st.AppliedAt = applied.Time
		}
		out = append(out, st)
	}
	return out, opError("peer statuses", rows.Err())
}

// QuotaUsage returns, per peer the node has now, the bytes (upload +
// download) of its usage on every node in rows that ended after its
// quota_reset_at (waylume.quota_usage, which answers for the session's
// node only), so a peer moved here does not start a fresh quota.
func (s *Store) QuotaUsage(ctx context.Context, nodeID string) (map[string]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT peer_id::text, used_bytes FROM waylume.quota_usage()`)
	if err != nil {
		return nil, opError("quota usage", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id string
		var n int64
		if err := rows.Scan(&id, &n); err != nil {
			return nil, opError("quota usage", err)
		}
		out[id] = n
	}
	return out, opError("quota usage", rows.Err())
}

// Heartbeat writes the node's liveness and counts to waylume.node_status,
// which Realtime does not publish, with last_seen_at the database's clock.
// The public key stays on waylume.nodes, where clients' configuration
// reads it, and is written only when it differs: at rest a heartbeat
// changes no published row. An empty PublicKey keeps the stored one. A
// node row that is absent or not visible is ErrNotFound.
func (s *Store) Heartbeat(ctx context.Context, nodeID string, hb events.Heartbeat) error {
	var n int
	err := s.pool.QueryRow(ctx, `WITH k AS (
			UPDATE waylume.nodes SET public_key = $2
			WHERE id = $1 AND $2 <> '' AND public_key IS DISTINCT FROM $2
		), st AS (
			INSERT INTO waylume.node_status AS s (node_id, status, last_seen_at, version, peer_count, active_sessions, updated_at)
			SELECT id, $3, now(), nullif($4, ''), $5, $6, now() FROM waylume.nodes WHERE id = $1
			ON CONFLICT (node_id) DO UPDATE SET status = EXCLUDED.status, last_seen_at = EXCLUDED.last_seen_at,
				version = EXCLUDED.version, peer_count = EXCLUDED.peer_count,
				active_sessions = EXCLUDED.active_sessions, updated_at = EXCLUDED.updated_at
			RETURNING 1
		) SELECT count(*) FROM st`, nodeID, hb.PublicKey, hb.Status, hb.Version, hb.Peers, hb.ActiveSessions).Scan(&n)
	if err != nil {
		return opError("heartbeat", err)
	}
	if n == 0 {
		return opError("heartbeat", fmt.Errorf("node %s: %w", nodeID, ErrNotFound))
	}
	return nil
}

// WriteCanary writes the node's canary row (waylume.node_canary) with
// nonce; the database sends it back on the node's Realtime channel, which
// proves the channel delivers. One row per node, overwritten each time.
func (s *Store) WriteCanary(ctx context.Context, nodeID, nonce string) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO waylume.node_canary (node_id, nonce, sent_at) VALUES ($1, $2, now())
		ON CONFLICT (node_id) DO UPDATE SET nonce = EXCLUDED.nonce, sent_at = EXCLUDED.sent_at`, nodeID, nonce)
	return opError("canary", err)
}

// isForeignKeyViolation reports SQLSTATE 23503 (a referenced row vanished meanwhile).
func isForeignKeyViolation(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23503"
}
