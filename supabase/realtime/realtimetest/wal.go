package realtimetest

// The postgres_changes pipeline's source: poll the wal2json slot
// (format-version 2, like the real server) for the publication's tables and
// hand each change to dispatch. A lost database connection takes the temporary slot with it;
// the poller tells the channels and starts over with a new slot.

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

type walCol struct {
	Name  string          `json:"name"`
	Type  string          `json:"type"`
	Value json.RawMessage `json:"value"`
}

type walChange struct {
	Action    string   `json:"action"`
	Xid       uint32   `json:"xid"`
	Timestamp string   `json:"timestamp"`
	Schema    string   `json:"schema"`
	Table     string   `json:"table"`
	Columns   []walCol `json:"columns"`
	Identity  []walCol `json:"identity"`
	PK        []walCol `json:"pk"`
	size      int
}

// poll reads the slot until ctx ends. When the database connection is
// lost, the temporary slot is gone with it: like the real server, it tells
// the subscribed channels (system error), reconnects with a new slot, and
// sends "Subscribed to PostgreSQL" again, so clients resync what they missed.
func (s *Server) poll(ctx context.Context, conn *pgx.Conn) {
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	lastRefresh, lastPoll := time.Now(), time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil {
			var err error
			if conn, err = s.openSlot(ctx); err != nil {
				continue
			}
			s.log.Info("realtimetest: database back; resubscribing")
			s.resubscribe(ctx, "")
		}
		if time.Since(lastRefresh) > time.Second {
			if err := s.refreshTables(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("realtimetest: refresh publication", "err", err)
			}
			lastRefresh = time.Now()
		}
		// Like the real server, whose poller runs only for a project with
		// postgres_changes subscribers, read the slot at full speed only
		// while a channel has bindings; otherwise just drain it.
		if !s.hasBindings() && time.Since(lastPoll) < idlePoll {
			continue
		}
		lastPoll = time.Now()
		err := s.pollOnce(ctx, conn)
		if err == nil || ctx.Err() != nil {
			continue
		}
		s.log.Warn("realtimetest: poll", "err", err)
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		perr := conn.Ping(pctx)
		cancel()
		if perr != nil {
			conn.Close(context.Background())
			conn = nil
			s.resubscribe(ctx, "Realtime was unable to connect to the project database")
		}
	}
}

// idlePoll is how often the slot is drained while no channel has
// postgres_changes bindings (the real server's poll interval).
const idlePoll = 100 * time.Millisecond

// hasBindings says whether any joined channel has postgres_changes
// bindings.
func (s *Server) hasBindings() bool {
	for _, so := range s.socketList() {
		so.mu.Lock()
		for _, ch := range so.mu.channels {
			if len(ch.bindings) > 0 {
				so.mu.Unlock()
				return true
			}
		}
		so.mu.Unlock()
	}
	return false
}

// openSlot connects and creates the temporary slot.
func (s *Server) openSlot(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, s.cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(cctx, "SELECT pg_create_logical_replication_slot($1, 'wal2json', true)", s.slot); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

// resubscribe tells every subscribed channel that the subscription failed
// (errMsg non-empty: channels stop receiving) or is live again.
func (s *Server) resubscribe(ctx context.Context, errMsg string) {
	for _, so := range s.socketList() {
		for _, ch := range so.channelList() {
			so.mu.Lock()
			was := ch.subbed
			if errMsg != "" {
				ch.subbed = false
			}
			so.mu.Unlock()
			if errMsg != "" {
				if was {
					so.push(strp(ch.joinRef), nil, ch.topic, "system", map[string]any{"channel": strings.TrimPrefix(ch.topic, "realtime:"),
						"extension": "postgres_changes", "status": "error", "message": errMsg})
				}
				continue
			}
			go so.subscribe(ch)
		}
	}
}

func escapeTable(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `,`, `\,`, `.`, `\.`, `*`, `\*`, ` `, `\ `)
	return r.Replace(s)
}

func (s *Server) pollOnce(ctx context.Context, conn *pgx.Conn) error {
	s.mu.Lock()
	var add []string
	for _, t := range s.mu.tables {
		add = append(add, escapeTable(t.schema)+"."+escapeTable(t.name))
	}
	s.mu.Unlock()
	if len(add) == 0 {
		return nil
	}
	rows, err := conn.Query(ctx, `SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL,
		'format-version', '2', 'include-timestamp', 'true', 'include-type-oids', 'true',
		'include-pk', 'true', 'include-transaction', 'false', 'include-xids', 'true',
		'actions', 'insert,update,delete', 'add-tables', $2)`, s.slot, strings.Join(add, ","))
	if err != nil {
		return fmt.Errorf("read slot: %w", err)
	}
	var changes []walChange
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			rows.Close()
			return err
		}
		var c walChange
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			s.log.Warn("realtimetest: undecodable wal2json output", "err", err)
			continue
		}
		c.size = len(data)
		changes = append(changes, c)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read slot: %w", err)
	}
	// Only a change someone subscribed to needs its row visible.
	var once sync.Once
	visible := func() { once.Do(func() { s.awaitVisible(ctx, xidsOf(changes)) }) }
	var polled int64
	defer func() { s.polled.Add(polled) }()
	for i := range changes {
		polled++
		if err := s.dispatch(ctx, &changes[i], visible); err != nil && ctx.Err() == nil {
			s.log.Warn("realtimetest: dispatch", "table", changes[i].Table, "err", err)
		}
	}
	return nil
}

// xidsOf lists the changes' transactions, each once.
func xidsOf(changes []walChange) []string {
	var out []string
	for i, c := range changes {
		if i == 0 || c.Xid != changes[i-1].Xid {
			out = append(out, strconv.FormatUint(uint64(c.Xid), 10))
		}
	}
	return out
}
