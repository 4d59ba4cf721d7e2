package supabase

import (
	"log/slog"
	"strings"

	"github.com/waylume/waylume-node/events"
)

// rtChangeEvent maps one change of waylume.peers or waylume.nodes to an
// event. A record the server flagged with errors, or one that does not
// decode, becomes a change without a row: the consumer refetches it by id.
// ok is false when not even the id is known (the caller resyncs).
func rtChangeEvent(nodeID string, d *rtChange, log *slog.Logger) (ev events.Event, ok bool) {
	vals := d.Record
	if d.Type == "DELETE" {
		vals = d.OldRecord
	}
	rec := rtNewRecord(d.Columns, vals)
	id, err := rec.str("id")
	if err != nil || id == "" {
		log.Warn("realtime: change without a row id; resyncing", "table", d.Table, "type", d.Type)
		return events.Event{}, false
	}
	errs := d.rtErrors()
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
		p, err := rtDecodePeer(rec)
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
		n, err := rtDecodeNode(rec)
		if err != nil {
			log.Warn("realtime: undecodable node record; refetching the row", "id", id, "err", err)
			return ev, true
		}
		ev.Node = &n
		return ev, true
	}
	return events.Event{}, false
}
