package realtimetest

// The change pipeline: poll the wal2json slot (format-version 2, like the
// real server), keep the publication's tables, match subscriptions, build
// the payload in SQL (values cast to their column type and passed through
// to_jsonb, as the real server's realtime.cast does), check RLS per
// subscriber for INSERT/UPDATE by querying the row as the token's role with
// request.jwt.claims set, and push postgres_changes to the channels.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

type tableInfo struct {
	schema, name string
	oid          uint32
	rls          bool
	cols         []colInfo // attnum order

	mu    sync.Mutex
	privs map[string][]colInfo // role -> selectable columns
}

type colInfo struct{ name, typname string }

func (t *tableInfo) key() string { return t.schema + "." + t.name }

func (t *tableInfo) ident() string {
	return pgx.Identifier{t.schema, t.name}.Sanitize()
}

// refreshTables rereads the publication's tables and their columns.
func (s *Server) refreshTables(ctx context.Context) error {
	rows, err := s.pool.Query(ctx, `
		SELECT pt.schemaname, pt.tablename, c.oid, c.relrowsecurity
		FROM pg_publication_tables pt
		JOIN pg_namespace n ON n.nspname = pt.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
		WHERE pt.pubname = $1`, s.cfg.Publication)
	if err != nil {
		return fmt.Errorf("realtimetest: publication tables: %w", err)
	}
	var list []*tableInfo
	for rows.Next() {
		t := &tableInfo{privs: map[string][]colInfo{}}
		if err := rows.Scan(&t.schema, &t.name, &t.oid, &t.rls); err != nil {
			rows.Close()
			return err
		}
		list = append(list, t)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("realtimetest: publication tables: %w", err)
	}
	tables := map[string]*tableInfo{}
	for _, t := range list {
		rows, err := s.pool.Query(ctx, `
			SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
			WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, t.oid)
		if err != nil {
			return fmt.Errorf("realtimetest: columns of %s: %w", t.key(), err)
		}
		for rows.Next() {
			var c colInfo
			if err := rows.Scan(&c.name, &c.typname); err != nil {
				rows.Close()
				return err
			}
			t.cols = append(t.cols, c)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		tables[t.key()] = t
	}
	s.mu.Lock()
	for k, t := range tables {
		if old := s.mu.tables[k]; old != nil && old.oid == t.oid && old.rls == t.rls && len(old.cols) == len(t.cols) {
			tables[k] = old // keep the privilege cache
		}
	}
	s.mu.tables = tables
	s.mu.Unlock()
	return nil
}

// columnsFor returns the columns role may select, cached.
func (s *Server) columnsFor(ctx context.Context, t *tableInfo, role string) ([]colInfo, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.privs[role]; ok {
		return c, nil
	}
	var out []colInfo
	for _, c := range t.cols {
		var ok bool
		if err := s.pool.QueryRow(ctx, "SELECT has_column_privilege($1, $2::oid, $3, 'SELECT')", role, t.oid, c.name).Scan(&ok); err != nil {
			return nil, fmt.Errorf("column privilege of %s on %s: %w", role, t.key(), err)
		}
		if ok {
			out = append(out, c)
		}
	}
	t.privs[role] = out
	return out, nil
}

func subscribeError(b binding) error {
	return fmt.Errorf("Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: %s, schema: %s, table: %s, filters: [%s]]",
		b.event, b.schema, b.table, b.raw)
}

// checkBinding validates one binding like the real server's subscription
// insert: table in the publication, filter well-formed on an existing
// column, role known.
func (s *Server) checkBinding(ctx context.Context, b binding, role string) error {
	if b.ferr != nil {
		return subscribeError(b)
	}
	s.mu.Lock()
	t := s.mu.tables[b.schema+"."+b.table]
	s.mu.Unlock()
	if t == nil {
		return subscribeError(b)
	}
	if b.filter != nil {
		found := false
		for _, c := range t.cols {
			found = found || c.name == b.filter.column
		}
		if !found {
			return subscribeError(b)
		}
	}
	var exists bool
	if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return fmt.Errorf("Subscribing to PostgreSQL failed: %v", err)
	}
	if !exists {
		return fmt.Errorf("Subscribing to PostgreSQL failed: role %q does not exist", role)
	}
	return nil
}

// ---- slot polling ----

type walCol struct {
	Name  string          `json:"name"`
	Type  string          `json:"type"`
	Value json.RawMessage `json:"value"`
}

type walChange struct {
	Action    string   `json:"action"`
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
	lastRefresh := time.Now()
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
		'include-pk', 'true', 'include-transaction', 'false',
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
	defer s.polled.Add(int64(len(changes)))
	for i := range changes {
		if err := s.dispatch(ctx, &changes[i]); err != nil && ctx.Err() == nil {
			s.log.Warn("realtimetest: dispatch", "table", changes[i].Table, "err", err)
		}
	}
	return nil
}

// target is one channel that a change may go to.
type target struct {
	so     *socket
	ch     *channel
	claims claims
	ids    []int64
}

// dispatch matches subscriptions, builds the payload and sends it.
func (s *Server) dispatch(ctx context.Context, c *walChange) error {
	action := map[string]string{"I": "INSERT", "U": "UPDATE", "D": "DELETE"}[c.Action]
	if action == "" {
		return nil
	}
	s.mu.Lock()
	t := s.mu.tables[c.Schema+"."+c.Table]
	lose, force, asText := s.mu.loseEvents, s.mu.forceErrors, s.mu.strings
	s.mu.Unlock()
	if t == nil || lose {
		return nil
	}
	newCols, oldCols := c.Columns, c.Identity
	if action == "DELETE" {
		newCols = nil
	}
	if action == "UPDATE" {
		// Unchanged TOAST values are missing from columns: take them from
		// the old row, as the real server does.
		have := map[string]bool{}
		for _, col := range newCols {
			have[col.Name] = true
		}
		for _, col := range oldCols {
			if !have[col.Name] {
				newCols = append(newCols, col)
			}
		}
	}
	filterCols := newCols
	if action == "DELETE" {
		filterCols = oldCols
	}

	// Candidates: subscribed channels with a binding on this table and event.
	type cand struct {
		tg  *target
		b   binding
		idx int // filter index in the query, -1: no filter
	}
	var cands []cand
	for _, so := range s.socketList() {
		so.mu.Lock()
		for _, ch := range so.mu.channels {
			if !ch.subbed {
				continue
			}
			var tg *target
			for _, b := range ch.bindings {
				if b.schema != c.Schema || b.table != c.Table || (b.event != "*" && b.event != action) {
					continue
				}
				if tg == nil {
					tg = &target{so: so, ch: ch, claims: ch.claims}
				}
				cands = append(cands, cand{tg: tg, b: b, idx: -1})
			}
		}
		so.mu.Unlock()
	}
	if len(cands) == 0 {
		return nil
	}

	// One query: both records as to_jsonb of the typed values, and every
	// filter evaluated in SQL on the new row (old row for DELETE).
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	text := func(raw json.RawMessage) any {
		if len(raw) == 0 || string(raw) == "null" {
			return nil
		}
		if raw[0] == '"' {
			var s string
			json.Unmarshal(raw, &s)
			return s
		}
		return string(raw)
	}
	record := func(cols []walCol) string {
		if len(cols) == 0 {
			return "NULL::jsonb"
		}
		var parts []string
		for i := 0; i < len(cols); i += 40 {
			var kv []string
			for _, col := range cols[i:min(i+40, len(cols))] {
				kv = append(kv, fmt.Sprintf("%s::text, to_jsonb(%s::text::%s)", arg(col.Name), arg(text(col.Value)), col.Type))
			}
			parts = append(parts, "jsonb_build_object("+strings.Join(kv, ", ")+")")
		}
		return strings.Join(parts, " || ")
	}
	recExpr, oldExpr := record(newCols), record(oldCols)
	var fexprs []string
	for i := range cands {
		f := cands[i].b.filter
		if f == nil {
			continue
		}
		expr := "false"
		for _, col := range filterCols {
			if col.Name == f.column {
				expr = f.sql(arg(text(col.Value)), arg(f.value), col.Type)
			}
		}
		cands[i].idx = len(fexprs)
		fexprs = append(fexprs, expr)
	}
	fexpr := "ARRAY[]::bool[]"
	if len(fexprs) > 0 {
		fexpr = "ARRAY[" + strings.Join(fexprs, ", ") + "]"
	}
	var recJSON, oldJSON []byte
	var pass []bool
	q := "SELECT " + recExpr + ", " + oldExpr + ", " + fexpr
	if err := s.pool.QueryRow(ctx, q, args...).Scan(&recJSON, &oldJSON, &pass); err != nil {
		return fmt.Errorf("build payload: %w", err)
	}
	var rec, old map[string]json.RawMessage
	if recJSON != nil {
		json.Unmarshal(recJSON, &rec)
	}
	if oldJSON != nil {
		json.Unmarshal(oldJSON, &old)
	}
	if asText {
		rec, old = textRecord(newCols), textRecord(oldCols)
	}

	var targets []*target
	for _, cd := range cands {
		if cd.idx >= 0 && !pass[cd.idx] {
			continue
		}
		if len(cd.tg.ids) == 0 {
			targets = append(targets, cd.tg)
		}
		cd.tg.ids = append(cd.tg.ids, cd.b.id)
	}

	errs := force
	if c.size > s.cfg.MaxRecordBytes {
		errs = []string{"Error 413: Payload Too Large"}
	}
	pks := map[string]bool{}
	for _, pk := range c.PK {
		pks[pk.Name] = true
	}
	commit := c.Timestamp
	if ts, err := time.Parse("2006-01-02 15:04:05.999999999-07", c.Timestamp); err == nil {
		commit = ts.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	visible := map[string]bool{} // role+claims -> RLS verdict
	for _, tg := range targets {
		role := tg.claims.role
		if t.rls && action != "DELETE" {
			key := role + "\x00" + string(tg.claims.raw)
			ok, seen := visible[key]
			if !seen {
				var err error
				if ok, err = s.rlsVisible(ctx, t, c.PK, newCols, tg.claims); err != nil {
					s.log.Warn("realtimetest: rls check", "role", role, "err", err)
				}
				visible[key] = ok
			}
			if !ok {
				continue
			}
		}
		cols, err := s.columnsFor(ctx, t, role)
		if err != nil {
			return err
		}
		if len(cols) == 0 {
			continue
		}
		data := map[string]any{"schema": c.Schema, "table": c.Table, "type": action, "commit_timestamp": commit}
		colList := make([]map[string]string, 0, len(cols))
		selectable := map[string]bool{}
		for _, col := range cols {
			colList = append(colList, map[string]string{"name": col.name, "type": col.typname})
			selectable[col.name] = true
		}
		data["columns"] = colList
		keep := func(m map[string]json.RawMessage, pkOnly bool) map[string]json.RawMessage {
			out := map[string]json.RawMessage{}
			for k, v := range m {
				if !selectable[k] || (pkOnly && !pks[k]) || (errs != nil && len(v) > 64) {
					continue
				}
				out[k] = v
			}
			return out
		}
		if action != "DELETE" {
			data["record"] = keep(rec, false)
		}
		if action == "UPDATE" {
			data["old_record"] = keep(old, false)
		}
		if action == "DELETE" {
			// RLS cannot be checked on a deleted row: only the key goes out.
			data["old_record"] = keep(old, t.rls)
		}
		if errs != nil {
			data["errors"] = errs
		} else {
			data["errors"] = nil
		}
		tg.so.push(nil, nil, tg.ch.topic, "postgres_changes", map[string]any{"ids": tg.ids, "data": data})
		s.delivered.Add(1)
	}
	return nil
}

// textRecord is what older servers sent: every value as PostgreSQL text.
func textRecord(cols []walCol) map[string]json.RawMessage {
	if cols == nil {
		return nil
	}
	out := map[string]json.RawMessage{}
	for _, col := range cols {
		v := col.Value
		if len(v) > 0 && v[0] != '"' && string(v) != "null" {
			v, _ = json.Marshal(string(v))
		}
		out[col.Name] = v
	}
	return out
}

// rlsVisible asks whether the token's role, with its claims set, can see
// the row by primary key, like the real server's walrus_rls_stmt.
func (s *Server) rlsVisible(ctx context.Context, t *tableInfo, pk []walCol, cols []walCol, c claims) (bool, error) {
	if len(pk) == 0 {
		return false, errors.New("no primary key")
	}
	var args []any
	var where []string
	for _, p := range pk {
		var val json.RawMessage
		for _, col := range cols {
			if col.Name == p.Name {
				val = col.Value
			}
		}
		var v any
		if len(val) > 0 && val[0] == '"' {
			var str string
			json.Unmarshal(val, &str)
			v = str
		} else if len(val) > 0 && string(val) != "null" {
			v = string(val)
		}
		args = append(args, v)
		where = append(where, fmt.Sprintf("%s = $%d::text::%s", pgx.Identifier{p.Name}.Sanitize(), len(args), p.Type))
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)", c.role, string(c.raw)); err != nil {
		return false, err
	}
	var ok bool
	err = tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+t.ident()+" WHERE "+strings.Join(where, " AND ")+")", args...).Scan(&ok)
	return ok, err
}
