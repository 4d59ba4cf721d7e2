package realtimetest

// Broadcast from Database and private channels. Rows inserted into
// realtime.messages (any partition) are streamed (stream.go) to the
// channels joined to their topic, private
// messages to private channels only. A private join is allowed when the
// token's role, with its claims and realtime.topic set, can read a message
// of the topic, as the real server checks it: a probe row written and read
// back in a transaction that is rolled back.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// joinRefusal is the reason a join of sub-topic sub is refused, "" when it
// is not: a forced error, a public join on a private-only project, or a
// private join the token's role may not read.
func (s *Server) joinRefusal(sub string, private bool, c claims) string {
	s.mu.Lock()
	forced := s.mu.joinErr
	s.mu.Unlock()
	switch {
	case forced != "":
		return forced
	case !private && s.cfg.PrivateOnly:
		return "PrivateOnly: This project only allows private channels"
	case !private:
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok, err := s.canRead(ctx, sub, c)
	if err != nil {
		s.log.Warn("realtimetest: private join check", "topic", sub, "role", c.role, "err", err)
	}
	if !ok {
		return "Unauthorized: You do not have permissions to read from this Channel topic: " + sub
	}
	return ""
}

// canRead reports whether role c.role with c's claims may read topic.
func (s *Server) canRead(ctx context.Context, topic string, c claims) (bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx)
	var id string
	if err := tx.QueryRow(ctx, `INSERT INTO realtime.messages (topic, extension, event, payload, private)
		VALUES ($1, 'broadcast', 'phx_join', '{}', true) RETURNING id::text`, topic).Scan(&id); err != nil {
		return false, fmt.Errorf("probe message: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true),
		set_config('realtime.topic', $3, true)`, c.role, string(c.raw), topic); err != nil {
		return false, err
	}
	var n int
	err = tx.QueryRow(ctx, `SELECT count(*) FROM realtime.messages WHERE id = $1 AND extension = 'broadcast'`, id).Scan(&n)
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "42501" {
		return false, nil // no grant: as refused as no policy
	}
	return n == 1, err
}

// isMessages says whether a change is a row of realtime.messages (its
// partitions are named messages_<day> on Supabase).
func isMessages(c *walChange) bool {
	return c.Schema == "realtime" && strings.HasPrefix(c.Table, "messages")
}

// message is a realtime.messages row as the slot gave it.
type message struct {
	id, topic, extension, event string
	private                     bool
	payload                     json.RawMessage
}

func messageOf(c *walChange) message {
	var m message
	for _, col := range c.Columns {
		v, _ := walText(col.Value).(string)
		switch col.Name {
		case "id":
			m.id = v
		case "topic":
			m.topic = v
		case "extension":
			m.extension = v
		case "event":
			m.event = v
		case "private":
			m.private = v == "true" || string(col.Value) == "true"
		case "payload":
			m.payload = json.RawMessage(v)
		}
	}
	if len(m.payload) == 0 {
		m.payload = json.RawMessage("null")
	}
	return m
}

// dispatchMessage sends one new realtime.messages row to the channels
// joined to its topic; visible waits until its transaction is visible,
// before the first channel gets it.
func (s *Server) dispatchMessage(c *walChange, visible func()) {
	if c.Action != "I" {
		return
	}
	m := messageOf(c)
	if m.extension != "broadcast" {
		return
	}
	if !s.admit() {
		return
	}
	topic := "realtime:" + m.topic
	for _, so := range s.socketList() {
		for _, ch := range so.channelList() {
			if ch.topic != topic || ch.private != m.private {
				continue
			}
			if so.isDeaf(ch) {
				s.dropped.Add(1)
				continue
			}
			visible()
			so.sendBroadcast(ch, m)
			s.broadcasts.Add(1)
		}
	}
}

// admit applies the rate limit to one message: over it, messages are
// dropped without a word.
func (s *Server) admit() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.rate <= 0 {
		return true
	}
	now := time.Now()
	if now.Sub(s.mu.window) >= time.Second {
		s.mu.window, s.mu.inWindow = now, 0
	}
	s.mu.inWindow++
	if s.mu.inWindow > s.mu.rate {
		s.dropped.Add(1)
		return false
	}
	return true
}

// sendBroadcast writes m to ch: a kind 4 binary frame in vsn 2.0.0, a
// "broadcast" message in 1.0.0.
func (so *socket) sendBroadcast(ch *channel, m message) {
	meta, _ := json.Marshal(map[string]string{"id": m.id})
	if so.vsn == "2.0.0" {
		so.enqueueFrame(outFrame{binary: true, b: UserBroadcastFrame(ch.topic, m.event, meta, m.payload)})
		return
	}
	so.push(nil, nil, ch.topic, "broadcast", map[string]any{
		"type": "broadcast", "event": m.event, "meta": json.RawMessage(meta), "payload": m.payload})
}

// UserBroadcastFrame is the server's vsn 2.0.0 binary user broadcast (kind
// 4) with a JSON payload: kind, the lengths of topic, event and metadata,
// the payload encoding (1: JSON), then the four parts.
func UserBroadcastFrame(topic, event string, meta, payload []byte) []byte {
	b := []byte{4, byte(len(topic)), byte(len(event)), byte(len(meta)), 1}
	b = append(b, topic...)
	b = append(b, event...)
	b = append(b, meta...)
	return append(b, payload...)
}

// ---- silent modes ----

// SetDeaf makes every channel joined so far deaf (on) or hearing again
// (off): still joined, heartbeats answered, and not a change or broadcast
// delivered, as after the real server's change capture stops. A channel
// joined later hears, as a rejoin does on the real server.
func (s *Server) SetDeaf(on bool) {
	for _, so := range s.socketList() {
		so.mu.Lock()
		for _, ch := range so.mu.channels {
			ch.deaf = on
		}
		so.mu.Unlock()
	}
}

func (so *socket) isDeaf(ch *channel) bool {
	so.mu.Lock()
	defer so.mu.Unlock()
	return ch.deaf
}

// SetRateLimit delivers at most n messages a second (changes and
// broadcasts together) and drops the rest silently; 0 lifts the limit.
func (s *Server) SetRateLimit(n int) {
	s.mu.Lock()
	s.mu.rate = n
	s.mu.Unlock()
}

// SetJoinError refuses every join with reason (after ErrorReplyDelay, like
// every join error); "" stops refusing.
func (s *Server) SetJoinError(reason string) {
	s.mu.Lock()
	s.mu.joinErr = reason
	s.mu.Unlock()
}

// JoinTimes returns when each phx_join arrived since New.
func (s *Server) JoinTimes() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.mu.joinTimes...)
}

// Broadcasts counts broadcast messages sent to channels since New.
func (s *Server) Broadcasts() int64 { return s.broadcasts.Load() }

// Dropped counts messages the silent modes swallowed since New.
func (s *Server) Dropped() int64 { return s.dropped.Load() }
