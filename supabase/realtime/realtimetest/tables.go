package realtimetest

// The publication's tables as the server sees them: columns, RLS, the
// columns each role may select, and the checks a subscription must pass.

import (
	"context"
	"fmt"
	"sync"

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
