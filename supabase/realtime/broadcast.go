package realtime

// Broadcast from Database: the node's private topic carries, for every
// change of its rows, {"table","op","id","node_id"} (docs/contract.md),
// and its own canaries. Messages arrive as "broadcast" text frames (vsn
// 1.0.0 objects or 2.0.0 arrays) or, in vsn 2.0.0, as binary frames.

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/waylume/waylume-node/events"
)

// Binary frame kinds the server sends (docs/realtime.md, "Binary frames").
const (
	binaryBroadcast     = 2 // Phoenix broadcast: topic, event, raw payload
	binaryUserBroadcast = 4 // user broadcast: topic, event, metadata, encoding, payload
)

// Broadcast events the database sends on a node's topic.
const (
	broadcastChange = "change"
	broadcastCanary = "canary"
)

// broadcastMsg is one user broadcast whatever its framing.
type broadcastMsg struct {
	Topic   string
	Event   string
	Payload json.RawMessage
}

// textBroadcast is the payload of a "broadcast" text frame.
type textBroadcast struct {
	Type    string          `json:"type"`
	Event   string          `json:"event"`
	Payload json.RawMessage `json:"payload"`
}

// decodeBinary decodes a binary frame of kind 2 or 4. Every length is one
// unsigned byte; a kind 4 frame whose payload encoding is raw bytes (0)
// carries no JSON, which the node never sends, and is refused.
func decodeBinary(b []byte) (broadcastMsg, error) {
	if len(b) < 3 {
		return broadcastMsg{}, fmt.Errorf("%w: binary frame of %d bytes", errMalformed, len(b))
	}
	var m broadcastMsg
	switch b[0] {
	case binaryBroadcast:
		tl, el := int(b[1]), int(b[2])
		rest := b[3:]
		if len(rest) < tl+el {
			return m, fmt.Errorf("%w: kind 2 frame shorter than its header", errMalformed)
		}
		m.Topic, m.Event, m.Payload = string(rest[:tl]), string(rest[tl:tl+el]), rest[tl+el:]
	case binaryUserBroadcast:
		if len(b) < 5 {
			return m, fmt.Errorf("%w: kind 4 header of %d bytes", errMalformed, len(b))
		}
		tl, el, ml, enc := int(b[1]), int(b[2]), int(b[3]), b[4]
		rest := b[5:]
		if len(rest) < tl+el+ml {
			return m, fmt.Errorf("%w: kind 4 frame shorter than its header", errMalformed)
		}
		if enc != 1 {
			return m, fmt.Errorf("%w: kind 4 payload encoding %d, want JSON (1)", errMalformed, enc)
		}
		m.Topic, m.Event, m.Payload = string(rest[:tl]), string(rest[tl:tl+el]), rest[tl+el+ml:]
	default:
		return m, fmt.Errorf("%w: binary frame kind %d", errMalformed, b[0])
	}
	return m, nil
}

// changeMsg is the database's change payload.
type changeMsg struct {
	Table  string `json:"table"`
	Op     string `json:"op"`
	ID     string `json:"id"`
	NodeID string `json:"node_id"`
	Nonce  string `json:"nonce"`
}

// broadcast handles one user broadcast on the node's topic.
func (s *session) broadcast(m broadcastMsg) {
	c := s.c
	var p changeMsg
	if err := unmarshal(m.Payload, &p); err != nil {
		c.log.Warn("realtime: undecodable broadcast; resyncing", "event", m.Event, "err", err, "bytes", len(m.Payload))
		c.sink.Add(events.Event{Kind: events.Resync, Source: "realtime"})
		return
	}
	switch m.Event {
	case broadcastCanary:
		s.proof.back(p.Nonce)
		return
	case broadcastChange:
	default:
		c.log.Debug("realtime: ignoring broadcast", "event", m.Event)
		return
	}

	ev, ok := broadcastEvent(c.cfg.NodeID, p)
	if !ok {
		c.log.Warn("realtime: broadcast without a row; resyncing", "table", p.Table, "op", p.Op)
		c.sink.Add(events.Event{Kind: events.Resync, Source: "realtime"})
		return
	}
	if ev.Kind != 0 {
		c.recheck.add(ev)
	}
}

// broadcastEvent maps a change payload to an event. Like a notification it
// is a hint: a peer is reread through the store, which returns only this
// node's rows, so a peer moved away (node_id another node's) or deleted is
// dropped by the reread.
func broadcastEvent(nodeID string, p changeMsg) (events.Event, bool) {
	if p.ID == "" {
		return events.Event{}, false
	}
	switch p.Table {
	case "peers":
		return events.Event{Kind: events.PeerChanged, ID: p.ID, Source: "realtime"}, true
	case "nodes":
		if !strings.EqualFold(p.ID, nodeID) {
			return events.Event{}, true // another node's row: nothing to do
		}
		return events.Event{Kind: events.NodeChanged, ID: p.ID, Source: "realtime"}, true
	}
	return events.Event{}, false
}
