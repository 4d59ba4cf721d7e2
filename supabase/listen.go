package supabase

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
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

// ListenConfig configures Listen.
type ListenConfig struct {
	URL    string // a direct or session-pooler connection: a transaction pooler does not keep LISTEN
	NodeID string
	Log    *slog.Logger // nil: discard
	// Dropped, when set, is called for every notification dropped as junk:
	// anything but the triggers' payload about this node's rows.
	Dropped func()
}

// listenIdle is how long the connection may stay silent before a ping
// checks that it is still alive (a dead peer sends no FIN).
const listenIdle = 30 * time.Second

// junkLogEvery spaces the warnings about dropped notifications: a flood
// must not become a flood of log lines.
const junkLogEvery = time.Minute

// Listen subscribes to node cfg.NodeID's NOTIFY channel on its own
// connection and feeds sink until ctx ends, then returns ctx's error. After
// every (re)connect, the first included, it emits events.Resync:
// notifications sent while it was away are lost. Connection failures are
// logged and retried with the jittered backoff of internal/retry, forever.
func Listen(ctx context.Context, cfg ListenConfig, sink events.Sink) error {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Dropped == nil {
		cfg.Dropped = func() {}
	}
	l := &listener{cfg: cfg, sink: sink}
	bo := retry.Policy{Initial: 250 * time.Millisecond, Max: 30 * time.Second}.New()
	for {
		connected, err := l.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if connected {
			bo.Reset()
		}
		wait := bo.Next()
		cfg.Log.Warn("listen: connection lost; reconnecting", "err", err, "retry_in", wait)
		if !retry.Sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

type listener struct {
	cfg  ListenConfig
	sink events.Sink
	// Junk since the last warning about it, and when that was.
	junk     int
	junkWarn time.Time
}

// session runs one connection: LISTEN, Resync, then notifications until
// the connection fails. connected reports whether LISTEN succeeded.
func (l *listener) session(ctx context.Context) (connected bool, err error) {
	conn, err := pgx.Connect(ctx, l.cfg.URL)
	if err != nil {
		return false, opError("listen: connect", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	channel := ListenChannel(l.cfg.NodeID)
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return false, opError("listen: LISTEN "+channel, err)
	}
	l.cfg.Log.Info("listening for changes", "channel", channel)
	l.sink.Add(events.Event{Kind: events.Resync, Source: "listen"})
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
		if ev, ok := listenEvent(l.cfg.NodeID, n.Payload); ok {
			l.sink.Add(ev)
		} else {
			l.dropped(n.Channel, len(n.Payload))
		}
	}
}

// dropped counts a junk notification and warns about junk at most once
// per junkLogEvery.
func (l *listener) dropped(channel string, size int) {
	l.cfg.Dropped()
	l.junk++
	if now := time.Now(); now.Sub(l.junkWarn) >= junkLogEvery {
		l.cfg.Log.Warn("listen: dropped notifications that are not the triggers' (anyone may NOTIFY on the channel)",
			"channel", channel, "dropped", l.junk, "last_payload_bytes", size)
		l.junk, l.junkWarn = 0, now
	}
}

// listenEvent turns a payload into an event, or reports junk. The payload
// is only a hint: NOTIFY needs no privilege, so any database login can
// send one on this node's channel. Every peer notification (insert,
// update, delete, move) therefore becomes "reread this row": the consumer
// fetches it through the store, which returns only this node's rows, and
// drops the peer only when the database says the row is gone or another
// node's. What the triggers never send (other tables or operations, ids
// that are not UUIDs, another node's row, extra fields) is dropped here,
// so it costs no read.
func listenEvent(nodeID, payload string) (events.Event, bool) {
	var p listenPayload
	dec := json.NewDecoder(strings.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil || dec.More() {
		return events.Event{}, false
	}
	switch p.Op {
	case "INSERT", "UPDATE", "DELETE":
	default:
		return events.Event{}, false
	}
	if !isUUID(p.ID) || !isUUID(p.NodeID) {
		return events.Event{}, false
	}
	ev := events.Event{ID: p.ID, Source: "listen"}
	switch {
	case p.Table == "peers":
		ev.Kind = events.PeerChanged
	case p.Table == "nodes" && p.ID == nodeID && p.NodeID == nodeID:
		ev.Kind = events.NodeChanged
	default:
		return events.Event{}, false
	}
	return ev, true
}

// isUUID accepts the canonical lower-case form uuid::text produces.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}
