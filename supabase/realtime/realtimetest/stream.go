package realtimetest

// Broadcast from Database's source. The real server reads realtime.messages
// through a streaming logical replication connection of its own (pgoutput,
// a publication of that table, a temporary slot): the database pushes each
// row as its transaction commits, where postgres_changes polls. The test
// server does the same with a replication=database connection that streams
// its own temporary wal2json slot, filtered to schema realtime, so it needs
// no publication (and no CREATE on the database) and decodes rows as the
// poller does. Losing the connection loses its slot: messages committed
// until the stream is back are gone without a word, as on the real server.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/waylume/waylume-node/internal/retry"
)

// standbyInterval is how often the stream confirms what it consumed (the
// database's wal_sender_timeout is 60 s).
const standbyInterval = 10 * time.Second

// pgEpoch is the origin of the replication protocol's timestamps.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// streamSlot names the message stream's slot.
func (s *Server) streamSlot() string { return s.slot + "_messages" }

// stream delivers realtime.messages rows from conn, and from a new stream
// each time one is lost, until ctx ends.
func (s *Server) stream(ctx context.Context, conn *pgconn.PgConn) {
	back := retry.Policy{Initial: 50 * time.Millisecond, Max: time.Second}.New()
	for ctx.Err() == nil {
		if conn == nil {
			var err error
			if conn, err = s.openStream(ctx); err != nil {
				if !retry.Sleep(ctx, back.Next()) {
					return
				}
				continue
			}
			back.Reset()
			s.log.Info("realtimetest: message stream back")
		}
		err := s.readStream(ctx, conn)
		conn.Close(context.Background())
		conn = nil
		if ctx.Err() == nil {
			s.log.Warn("realtimetest: message stream lost", "err", err)
		}
	}
}

// openStream connects for replication, creates the temporary slot and
// starts streaming it.
func (s *Server) openStream(ctx context.Context) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(s.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("message stream: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "realtimetest_messages"
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("message stream: %w", err)
	}
	if err := startStream(cctx, conn, s.streamSlot()); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("message stream: %w", err)
	}
	return conn, nil
}

func startStream(ctx context.Context, conn *pgconn.PgConn, slot string) error {
	if _, err := conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+slot+" TEMPORARY LOGICAL wal2json NOEXPORT_SNAPSHOT").ReadAll(); err != nil {
		return fmt.Errorf("create slot: %w", err)
	}
	conn.Frontend().Send(&pgproto3.Query{String: "START_REPLICATION SLOT " + slot + ` LOGICAL 0/0 (
		"format-version" '2', "include-timestamp" 'true', "include-type-oids" 'true', "include-xids" 'true',
		"include-transaction" 'false', "actions" 'insert', "add-tables" 'realtime.*')`})
	if err := conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("start replication: %w", err)
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("start replication: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return nil
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("start replication: %w", pgconn.ErrorResponseToPgError(m))
		}
	}
}

// readStream dispatches what conn streams until it fails or ctx ends,
// confirming its position every standbyInterval and whenever the database
// asks.
func (s *Server) readStream(ctx context.Context, conn *pgconn.PgConn) error {
	var pos uint64     // end of the WAL consumed so far
	var visible string // xid of the last transaction seen visible
	due := time.Now().Add(standbyInterval)
	for {
		rctx, cancel := context.WithDeadline(ctx, due)
		msg, err := conn.ReceiveMessage(rctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case pgconn.Timeout(err):
			if err := sendStandby(conn, pos); err != nil {
				return err
			}
			due = time.Now().Add(standbyInterval)
			continue
		case err != nil:
			return fmt.Errorf("receive: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			reply, err := s.streamData(m.Data, &pos, &visible)
			if err != nil {
				return err
			}
			if reply {
				if err := sendStandby(conn, pos); err != nil {
					return err
				}
				due = time.Now().Add(standbyInterval)
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		}
	}
}

// streamData handles one CopyData of the stream: XLogData ('w': start,
// end, server time, then one wal2json row) or a primary keepalive ('k':
// end, server time, reply requested). It advances pos, remembers the last
// transaction seen visible, and says whether the database wants a reply
// now.
func (s *Server) streamData(b []byte, pos *uint64, visible *string) (reply bool, err error) {
	switch {
	case len(b) >= 25 && b[0] == 'w':
		data := b[25:]
		*pos = max(*pos, binary.BigEndian.Uint64(b[1:])+uint64(len(data)))
		var c walChange
		if err := json.Unmarshal(data, &c); err != nil {
			s.log.Warn("realtimetest: undecodable wal2json output", "err", err)
			return false, nil
		}
		c.size = len(data)
		if isMessages(&c) {
			s.dispatchMessage(&c, func() {
				if x := strconv.FormatUint(uint64(c.Xid), 10); x != *visible {
					s.awaitVisible(context.Background(), []string{x})
					*visible = x
				}
			})
		}
		return false, nil
	case len(b) >= 18 && b[0] == 'k':
		*pos = max(*pos, binary.BigEndian.Uint64(b[1:]))
		return b[17] == 1, nil
	}
	return false, fmt.Errorf("message stream: unexpected copy data %q", b[:min(len(b), 1)])
}

// sendStandby confirms pos as written, flushed and applied, so the slot
// lets go of the WAL before it.
func sendStandby(conn *pgconn.PgConn, pos uint64) error {
	b := make([]byte, 34)
	b[0] = 'r'
	binary.BigEndian.PutUint64(b[1:], pos)
	binary.BigEndian.PutUint64(b[9:], pos)
	binary.BigEndian.PutUint64(b[17:], pos)
	binary.BigEndian.PutUint64(b[25:], uint64(time.Since(pgEpoch).Microseconds()))
	conn.Frontend().Send(&pgproto3.CopyData{Data: b})
	if err := conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("standby status: %w", err)
	}
	return nil
}

// awaitVisible waits, up to a second, until the transactions xids (decoded,
// so committed) are visible to new snapshots. Logical decoding may hand out
// a transaction as soon as its commit record is flushed, a moment before
// the committing backend makes it visible: a row read at once, to check RLS
// or by a client rereading on a broadcast, may then be missing. The real
// server has that window too (its pipeline is usually slower than it); the
// test server closes it so tests are deterministic. The xids are taken to be of
// the current epoch (a test cluster's first); were they not, nothing waits.
func (s *Server) awaitVisible(ctx context.Context, xids []string) {
	if len(xids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	for {
		var ok bool
		err := s.pool.QueryRow(ctx, `SELECT bool_and(pg_visible_in_snapshot(x::xid8, s))
			FROM unnest($1::text[]) x, pg_current_snapshot() s`, xids).Scan(&ok)
		if err != nil || ok {
			return
		}
		if !retry.Sleep(ctx, 200*time.Microsecond) {
			s.log.Warn("realtimetest: decoded transactions not visible after a second", "xids", xids)
			return
		}
	}
}
