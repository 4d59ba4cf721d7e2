package realtimetest

// From one change to postgres_changes messages: match the subscribed
// channels' bindings, build the payload in SQL (values cast to their column
// type and passed through to_jsonb, as the real server's realtime.cast
// does, filters evaluated on the new row), check RLS per subscriber for
// INSERT/UPDATE by querying the row as the token's role with
// request.jwt.claims set, and push to the channels the row is visible to.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

var walActions = map[string]string{"I": "INSERT", "U": "UPDATE", "D": "DELETE"}

// target is one channel that a change may go to.
type target struct {
	so     *socket
	ch     *channel
	claims claims
	ids    []int64
}

// candidate is one binding that matches a change's table and event; idx is
// its filter's index in the payload query, -1 when it has none.
type candidate struct {
	tg  *target
	b   binding
	idx int
}

// delivery is one change on its way to the channels.
type delivery struct {
	c                *walChange
	t                *tableInfo
	action           string
	newCols, oldCols []walCol
	rec, old         map[string]json.RawMessage // as to_jsonb made them (or text)
	errs             []string                   // the payload's errors; nil: none
	pks              map[string]bool
	commit           string
}

// dispatch matches subscriptions, builds the payload and sends it; visible
// waits until the change's transaction is visible, before its row is read.
func (s *Server) dispatch(ctx context.Context, c *walChange, visible func()) error {
	action := walActions[c.Action]
	if action == "" {
		return nil
	}
	s.mu.Lock()
	t := s.mu.tables[c.Schema+"."+c.Table]
	lose, force, asText := s.mu.loseEvents, s.mu.forceErrors, s.mu.strings
	s.mu.Unlock()
	if t == nil || lose || !s.admit() {
		return nil
	}
	d := &delivery{c: c, t: t, action: action, errs: force, pks: map[string]bool{}, commit: commitTimestamp(c.Timestamp)}
	d.newCols, d.oldCols = rowColumns(action, c)
	cands := s.candidates(c, action)
	if len(cands) == 0 {
		return nil
	}
	visible()
	pass, err := s.buildPayload(ctx, d, cands)
	if err != nil {
		return err
	}
	if asText {
		d.rec, d.old = textRecord(d.newCols), textRecord(d.oldCols)
	}
	if c.size > s.cfg.MaxRecordBytes {
		d.errs = []string{"Error 413: Payload Too Large"}
	}
	for _, pk := range c.PK {
		d.pks[pk.Name] = true
	}
	return s.deliver(ctx, d, matchTargets(cands, pass))
}

// rowColumns returns the new row's and the old row's columns as wal2json
// gave them.
func rowColumns(action string, c *walChange) (newCols, oldCols []walCol) {
	newCols, oldCols = c.Columns, c.Identity
	switch action {
	case "DELETE":
		newCols = nil
	case "UPDATE":
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
	return newCols, oldCols
}

// filterCols is the row filters run on: the new row, the old one for DELETE.
func (d *delivery) filterCols() []walCol {
	if d.action == "DELETE" {
		return d.oldCols
	}
	return d.newCols
}

// commitTimestamp turns wal2json's timestamp into the server's ISO form.
func commitTimestamp(ts string) string {
	if t, err := time.Parse("2006-01-02 15:04:05.999999999-07", ts); err == nil {
		return t.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	return ts
}

// candidates are the subscribed channels' bindings on the change's table
// and event; a channel's bindings share one target.
func (s *Server) candidates(c *walChange, action string) []candidate {
	var cands []candidate
	for _, so := range s.socketList() {
		so.mu.Lock()
		for _, ch := range so.mu.channels {
			if !ch.subbed {
				continue
			}
			if ch.deaf {
				s.dropped.Add(1)
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
				cands = append(cands, candidate{tg: tg, b: b, idx: -1})
			}
		}
		so.mu.Unlock()
	}
	return cands
}

// payloadQuery collects the arguments of the payload query.
type payloadQuery struct{ args []any }

func (q *payloadQuery) arg(v any) string {
	q.args = append(q.args, v)
	return fmt.Sprintf("$%d", len(q.args))
}

// record is a jsonb expression of the typed row; jsonb_build_object takes
// at most 100 arguments, so it is built in pieces of 40 columns.
func (q *payloadQuery) record(cols []walCol) string {
	if len(cols) == 0 {
		return "NULL::jsonb"
	}
	var parts []string
	for i := 0; i < len(cols); i += 40 {
		var kv []string
		for _, col := range cols[i:min(i+40, len(cols))] {
			kv = append(kv, fmt.Sprintf("%s::text, to_jsonb(%s::text::%s)", q.arg(col.Name), q.arg(walText(col.Value)), col.Type))
		}
		parts = append(parts, "jsonb_build_object("+strings.Join(kv, ", ")+")")
	}
	return strings.Join(parts, " || ")
}

// buildPayload runs one query: both records as to_jsonb of the typed
// values into d, and every candidate's filter evaluated in SQL; pass holds
// the verdicts by candidate.idx.
func (s *Server) buildPayload(ctx context.Context, d *delivery, cands []candidate) (pass []bool, err error) {
	var q payloadQuery
	recExpr, oldExpr := q.record(d.newCols), q.record(d.oldCols)
	var fexprs []string
	for i := range cands {
		f := cands[i].b.filter
		if f == nil {
			continue
		}
		expr := "false"
		for _, col := range d.filterCols() {
			if col.Name == f.column {
				expr = f.sql(q.arg(walText(col.Value)), q.arg(f.value), col.Type)
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
	sql := "SELECT " + recExpr + ", " + oldExpr + ", " + fexpr
	if err := s.pool.QueryRow(ctx, sql, q.args...).Scan(&recJSON, &oldJSON, &pass); err != nil {
		return nil, fmt.Errorf("build payload: %w", err)
	}
	if recJSON != nil {
		json.Unmarshal(recJSON, &d.rec)
	}
	if oldJSON != nil {
		json.Unmarshal(oldJSON, &d.old)
	}
	return pass, nil
}

// walText is a wal2json value as PostgreSQL text; nil for NULL.
func walText(raw json.RawMessage) any {
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

// matchTargets keeps the candidates whose filter passed, collecting each
// target's binding ids.
func matchTargets(cands []candidate, pass []bool) []*target {
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
	return targets
}

// deliver pushes the change to every target allowed to see it, with the
// columns its role may select.
func (s *Server) deliver(ctx context.Context, d *delivery, targets []*target) error {
	visible := map[string]bool{} // role+claims -> RLS verdict
	for _, tg := range targets {
		if !s.visibleTo(ctx, d, tg.claims, visible) {
			continue
		}
		cols, err := s.columnsFor(ctx, d.t, tg.claims.role)
		if err != nil {
			return err
		}
		if len(cols) == 0 {
			continue
		}
		tg.so.push(nil, nil, tg.ch.topic, "postgres_changes", map[string]any{"ids": tg.ids, "data": d.data(cols)})
		s.delivered.Add(1)
	}
	return nil
}

// visibleTo applies RLS to INSERT and UPDATE; seen caches the verdict per
// role and claims for this change.
func (s *Server) visibleTo(ctx context.Context, d *delivery, c claims, seen map[string]bool) bool {
	if !d.t.rls || d.action == "DELETE" {
		return true
	}
	key := c.role + "\x00" + string(c.raw)
	ok, cached := seen[key]
	if !cached {
		var err error
		if ok, err = s.rlsVisible(ctx, d.t, d.c.PK, d.newCols, c); err != nil {
			s.log.Warn("realtimetest: rls check", "role", c.role, "err", err)
		}
		seen[key] = ok
	}
	return ok
}

// data is the message's data for a subscriber that may select cols.
func (d *delivery) data(cols []colInfo) map[string]any {
	data := map[string]any{"schema": d.c.Schema, "table": d.c.Table, "type": d.action, "commit_timestamp": d.commit}
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
			if !selectable[k] || (pkOnly && !d.pks[k]) || (d.errs != nil && len(v) > 64) {
				continue
			}
			out[k] = v
		}
		return out
	}
	switch d.action {
	case "INSERT":
		data["record"] = keep(d.rec, false)
	case "UPDATE":
		data["record"] = keep(d.rec, false)
		data["old_record"] = keep(d.old, false)
	case "DELETE":
		// RLS cannot be checked on a deleted row: only the key goes out.
		data["old_record"] = keep(d.old, d.t.rls)
	}
	if d.errs != nil {
		data["errors"] = d.errs
	} else {
		data["errors"] = nil
	}
	return data
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
		args = append(args, walText(val))
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
