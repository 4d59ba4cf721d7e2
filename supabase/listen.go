package supabase

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/retry"
)

// ListenChannel returns node nodeID's NOTIFY channel, as the database's
// waylume.node_channel(uuid) names it.
func ListenChannel(nodeID string) string { return "waylume_node_" + nodeID }

// listenPayload is the NOTIFY payload of the waylume triggers.
type listenPayload struct {
	Table  string `json:"table"`
	Op     string `json:"op"`
	ID     string `json:"id"`
	NodeID string `json:"node_id"`
}

// listenIdle is how long the connection may stay silent before a ping
// checks that it is still alive (a dead peer sends no FIN).
const listenIdle = 30 * time.Second

// Listen subscribes to node nodeID's NOTIFY channel on its own connection
// and feeds sink until ctx ends, then returns ctx's error. After every
// (re)connect, the first included, it emits events.Resync: notifications
// sent while it was away are lost. Connection failures are logged and
// retried with the jittered backoff of internal/retry, forever.
//
// It needs a direct or session-pooler connection: a transaction pooler
// does not keep LISTEN.
func Listen(ctx context.Context, url, nodeID string, sink events.Sink, log *slog.Logger) error {
	bo := retry.Policy{Initial: 250 * time.Millisecond, Max: 30 * time.Second}.New()
	for {
		connected, err := listenSession(ctx, url, nodeID, sink, log)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if connected {
			bo.Reset()
		}
		wait := bo.Next()
		log.Warn("listen: connection lost; reconnecting", "err", err, "retry_in", wait)
		if !retry.Sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// listenSession runs one connection: LISTEN, Resync, then notifications
// until the connection fails. connected reports whether LISTEN succeeded.
func listenSession(ctx context.Context, url, nodeID string, sink events.Sink, log *slog.Logger) (connected bool, err error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return false, opError("listen: connect", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	channel := ListenChannel(nodeID)
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return false, opError("listen: LISTEN "+channel, err)
	}
	log.Info("listening for changes", "channel", channel)
	sink.Add(events.Event{Kind: events.Resync, Source: "listen"})
	for {
		wctx, cancel := context.WithTimeout(ctx, listenIdle)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if ctx.Err() != nil {
			return true, ctx.Err()
		}
		if errors.Is(err, context.DeadlineExceeded) {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return true, opError("listen: ping", err)
			}
			continue
		}
		if err != nil {
			return true, opError("listen: wait", err)
		}
		ev, ok := listenEvent(n.Payload)
		if !ok {
			log.Warn("listen: unreadable notification; resyncing", "channel", n.Channel, "payload_bytes", len(n.Payload))
			ev = events.Event{Kind: events.Resync, Source: "listen"}
		}
		sink.Add(ev)
	}
}

// listenEvent turns a payload into an event. The payload is only a hint:
// NOTIFY needs no privilege, so any database login can send one on this
// node's channel. Every peer notification (insert, update, delete, move)
// therefore becomes "reread this row": the consumer fetches it through the
// store, which returns only this node's rows, and drops the peer only when
// the database says the row is gone or another node's.
func listenEvent(payload string) (events.Event, bool) {
	var p listenPayload
	if err := json.Unmarshal([]byte(payload), &p); err != nil || p.ID == "" {
		return events.Event{}, false
	}
	ev := events.Event{ID: p.ID, Source: "listen"}
	switch p.Table {
	case "peers":
		ev.Kind = events.PeerChanged
	case "nodes":
		ev.Kind = events.NodeChanged
	default:
		return events.Event{}, false
	}
	return ev, true
}
