package supabase

// What the node's own commands read besides the reconcile loop: the
// overview `status` shows, and the single-connection reads a preflight
// makes. They use the same columns, scans and errors as the Store.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/waylume/waylume-node/events"
)

// Overview is the node's row, its peers and their status rows.
type Overview struct {
	Node       events.Node
	LastSeenAt time.Time // zero: never
	Peers      []events.Peer
	Status     map[string]events.PeerStatus // by peer id; absent: none written yet
}

// Overview reads the node's row, peers and status rows through the
// contract tables, so the node's own (RLS) credentials do as well as the
// service role's. The error wraps ErrNotFound when the row is absent or
// not visible.
func (s *Store) Overview(ctx context.Context, nodeID string) (Overview, error) {
	node, peers, err := s.Snapshot(ctx, nodeID)
	if err != nil {
		return Overview{}, err
	}
	statuses, err := s.PeerStatuses(ctx, nodeID)
	if err != nil {
		return Overview{}, err
	}
	o := Overview{Node: node, Peers: peers, Status: make(map[string]events.PeerStatus, len(statuses))}
	for _, st := range statuses {
		o.Status[st.PeerID] = st
	}
	var seen pgtype.Timestamptz
	if err := s.pool.QueryRow(ctx, `SELECT last_seen_at FROM waylume.node_overview WHERE id = $1`, nodeID).Scan(&seen); err != nil {
		return Overview{}, opError("overview: last seen", err)
	}
	if seen.Valid {
		o.LastSeenAt = seen.Time
	}
	return o, nil
}

// Connect opens one connection for a command that needs a session of its
// own (LISTEN, migrations, operator calls). Errors never carry the URL,
// password included.
func Connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, opError("connect", errInvalidURL)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	return conn, opError("connect", err)
}

// ServerVersion is the server's version string (SHOW server_version).
func ServerVersion(ctx context.Context, conn *pgx.Conn) (string, error) {
	var v string
	err := conn.QueryRow(ctx, "SHOW server_version").Scan(&v)
	return v, opError("server version", err)
}

// NodeRow reads node nodeID's row over conn, as the Store does; the error
// wraps ErrNotFound when it is absent or not visible to the role.
func NodeRow(ctx context.Context, conn *pgx.Conn, nodeID string) (events.Node, error) {
	n, err := scanNode(conn.QueryRow(ctx, `SELECT `+nodeColumns+` FROM waylume.nodes WHERE id = $1`, nodeID))
	if errors.Is(err, pgx.ErrNoRows) {
		return n, opError("node", fmt.Errorf("node %s: %w", nodeID, ErrNotFound))
	}
	return n, opError("node "+nodeID, err)
}

// TransactionPooler recognises Supabase's transaction pooler (Supavisor on
// port 6543), where LISTEN does not work and Realtime is the event source.
func TransactionPooler(url string) bool {
	cfg, err := pgx.ParseConfig(url)
	return err == nil && cfg.Port == 6543
}

// ListenRoundTrip proves LISTEN/NOTIFY works on conn: it listens on a
// channel of its own, notifies it and waits up to five seconds for the
// notification.
func ListenRoundTrip(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "LISTEN waylume_check"); err != nil {
		return fmt.Errorf("LISTEN: %w", err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_notify('waylume_check', 'ping')"); err != nil {
		return fmt.Errorf("NOTIFY: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := conn.WaitForNotification(wctx); err != nil {
		return fmt.Errorf("LISTEN/NOTIFY round trip failed: %w", err)
	}
	_, err := conn.Exec(ctx, "UNLISTEN waylume_check")
	return opError("UNLISTEN", err)
}
