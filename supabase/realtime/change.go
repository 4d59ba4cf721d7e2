package realtime

import (
	"encoding/json"
	"log/slog"
	"strings"

	"github.com/waylume/waylume-node/events"
)

// changes dispatches one postgres_changes message.
func (s *session) changes(raw json.RawMessage) {
	c := s.c
	var cp changePayload
	if err := unmarshal(raw, &cp); err != nil {
		// Something changed and we cannot tell what: reread everything.
		c.log.Warn("realtime: undecodable change; resyncing", "err", err, "bytes", len(raw))
		c.sink.Add(events.Event{Kind: events.Resync, Source: "realtime"})
		return
	}
	idx := -1
	for _, id := range cp.IDs {
		if i, ok := s.ids[id.String()]; ok {
			idx = i
			break
		}
	}
	if idx < 0 {
		c.log.Debug("realtime: change for no binding of ours", "ids", cp.IDs)
		return
	}
	b := c.binds[idx]
	d := &cp.Data
	if d.Schema != b.Schema || d.Table != b.Table {
		c.log.Warn("realtime: change routed to the wrong binding; resyncing", "table", d.Schema+"."+d.Table)
		c.sink.Add(events.Event{Kind: events.Resync, Source: "realtime"})
		return
	}
	switch d.Type {
	case "INSERT", "UPDATE", "DELETE":
	default:
		return // older servers send types we did not ask for
	}
	if b.Table == "node_canary" {
		nonce, _ := newRecord(d.Columns, d.Record).str("nonce")
		s.proof.back(nonce)
		return
	}
	commit, _ := parseTime(d.CommitTimestamp)
	ev, ok := changeEvent(c.cfg.NodeID, d, c.log)
	if !ok {
		c.sink.Add(events.Event{Kind: events.Resync, Source: "realtime", Commit: commit})
		return
	}
	if ev.Kind == 0 {
		return
	}
	ev.Source, ev.Commit = "realtime", commit
	c.recheck.add(ev)
}

// changeEvent maps one change of waylume.peers or waylume.nodes to an
// event. A record the server flagged with errors, or one that does not
// decode, becomes a change without a row: the consumer refetches it by id.
// ok is false when not even the id is known (the caller resyncs).
func changeEvent(nodeID string, d *change, log *slog.Logger) (ev events.Event, ok bool) {
	vals := d.Record
	if d.Type == "DELETE" {
		vals = d.OldRecord
	}
	rec := newRecord(d.Columns, vals)
	id, err := rec.str("id")
	if err != nil || id == "" {
		log.Warn("realtime: change without a row id; resyncing", "table", d.Table, "type", d.Type)
		return events.Event{}, false
	}
	errs := d.errs()
	if len(errs) > 0 {
		log.Warn("realtime: incomplete record; refetching the row", "table", d.Table, "id", id, "errors", errs)
	}
	switch d.Table {
	case "peers":
		if d.Type == "DELETE" {
			return events.Event{Kind: events.PeerDeleted, ID: id}, true
		}
		ev = events.Event{Kind: events.PeerChanged, ID: id}
		if len(errs) > 0 {
			return ev, true
		}
		p, err := decodePeer(rec)
		if err != nil {
			log.Warn("realtime: undecodable peer record; refetching the row", "id", id, "err", err)
			return ev, true
		}
		if !strings.EqualFold(p.NodeID, nodeID) {
			// Filters run on the new row, so this should not come; if it
			// does, the peer is not ours (any more).
			return events.Event{Kind: events.PeerDeleted, ID: id}, true
		}
		ev.Peer = &p
		return ev, true
	case "nodes":
		if !strings.EqualFold(id, nodeID) {
			log.Warn("realtime: change of another node's row ignored", "id", id)
			return events.Event{}, true // Kind 0: nothing to emit
		}
		ev = events.Event{Kind: events.NodeChanged, ID: id}
		if d.Type == "DELETE" || len(errs) > 0 {
			return ev, true
		}
		n, err := decodeNode(rec)
		if err != nil {
			log.Warn("realtime: undecodable node record; refetching the row", "id", id, "err", err)
			return ev, true
		}
		ev.Node = &n
		return ev, true
	}
	return events.Event{}, false
}
