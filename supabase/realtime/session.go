package realtime

// One websocket session: dial, join, heartbeats, token pushes and change
// dispatch. Only the reader goroutine touches conn.Read; everything else,
// including every write, happens on the session goroutine, so no write lock
// is needed. The session returns when anything goes wrong and always waits
// for its reader before returning, so sessions leak neither goroutines nor
// sockets.

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/coder/websocket"

	"github.com/waylume/waylume-node/events"
)

type session struct {
	c       *Client
	conn    *websocket.Conn
	frames  <-chan inbound // frames from the reader
	readErr <-chan error   // the reader's final error
	refs    refCounter
	joinRef string
	ids     map[string]int // binding id from the join reply -> index in c.binds
	token   string         // the token the server holds for this channel
	joined  bool           // ok reply received
	subbed  bool           // "Subscribed to PostgreSQL" received and not revoked
	live    bool           // subscribed at least once in this session
	n       int            // session number, for OnState
	sysErr  string         // last system error text, explains a following phx_close
	// pendingHB is the ref of the heartbeat awaiting its reply, "" when
	// none is outstanding.
	pendingHB string
	proof     *canaryProof
}

// inbound is one frame as read: text (JSON) or binary (v2 broadcasts).
type inbound struct {
	binary bool
	data   []byte
}

// session runs one connection until it fails or ctx ends. live reports
// whether the subscription became live at least once.
func (c *Client) session(ctx context.Context, n int) (live bool, err error) {
	c.state(State{Phase: Connecting, Sessions: n})
	dctx, dcancel := context.WithTimeout(ctx, c.cfg.JoinTimeout)
	conn, resp, err := websocket.Dial(dctx, c.dialURL(), &websocket.DialOptions{})
	dcancel()
	if err != nil {
		return false, upgradeError(resp, err)
	}
	conn.SetReadLimit(readLimit)

	sctx, cancel := context.WithCancel(ctx)
	frames, readErr, done := read(sctx, conn)
	push := make(chan struct{}, 1)
	c.setPush(push)

	s := &session{c: c, conn: conn, frames: frames, readErr: readErr, n: n, ids: map[string]int{},
		proof: newCanaryProof(c.cfg.Canary, c.cfg.CanaryTimeout)}
	defer func() {
		c.setPush(nil)
		if ctx.Err() != nil {
			conn.Close(websocket.StatusNormalClosure, "")
		}
		cancel()
		conn.CloseNow()
		<-done
		live = s.live
	}()

	if err := s.join(sctx); err != nil {
		return false, err
	}
	c.state(State{Phase: Joining, Sessions: n})
	err = s.loop(ctx, sctx, push)
	return s.live, err
}

// read runs conn's only reader until a read fails or ctx ends: frames go
// to frames, the failure to readErr; done closes when it has returned.
func read(ctx context.Context, conn *websocket.Conn) (frames <-chan inbound, readErr <-chan error, done <-chan struct{}) {
	fc := make(chan inbound, 64)
	ec := make(chan error, 1)
	dc := make(chan struct{})
	go func() {
		defer close(dc)
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				ec <- err
				return
			}
			select {
			case fc <- inbound{binary: typ == websocket.MessageBinary, data: data}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return fc, ec, dc
}

// loop serves the joined socket until something fails: ctx is Run's
// context, sctx the session's (it also ends when the session does).
func (s *session) loop(ctx, sctx context.Context, push <-chan struct{}) error {
	cfg := &s.c.cfg
	joinTimer := time.NewTimer(cfg.JoinTimeout)
	defer joinTimer.Stop()
	// Armed while joined but not subscribed: a server that never sends
	// "Subscribed" (nor retries) would otherwise leave us joined and deaf.
	subTimer := time.NewTimer(cfg.SubscribeTimeout)
	defer subTimer.Stop()
	subArmed := true
	hb := time.NewTicker(cfg.HeartbeatInterval)
	defer hb.Stop()
	// The canary clock runs only when canaries are on; checks at a tenth
	// of the timeout find a late one within 10% of it.
	var canaryC, overdueC <-chan time.Time
	if s.proof.enabled() {
		ct := time.NewTicker(cfg.CanaryInterval)
		defer ct.Stop()
		ot := time.NewTicker(max(cfg.CanaryTimeout/10, 10*time.Millisecond))
		defer ot.Stop()
		canaryC, overdueC = ct.C, ot.C
	}

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-s.readErr:
			return s.readFailed(ctx, sctx, err)
		case <-joinTimer.C:
			if !s.joined {
				return &Error{Op: "join", Reason: fmt.Sprintf("no reply within %v", cfg.JoinTimeout)}
			}
		case <-subTimer.C:
			subArmed = false
			if !s.subbed {
				return &Error{Op: "subscribe", Reason: fmt.Sprintf("not subscribed to PostgreSQL within %v", cfg.SubscribeTimeout)}
			}
		case <-hb.C:
			if err := s.heartbeat(sctx); err != nil {
				return err
			}
		case <-push:
			if err := s.pushToken(sctx); err != nil {
				return err
			}
		case <-canaryC:
			if s.subbed {
				s.proof.start(sctx)
			}
		case r := <-s.proof.result:
			if err := s.proof.written(r); err != nil {
				s.c.log.Warn("realtime: canary not written; the channel is not judged this round", "err", err)
			}
		case now := <-overdueC:
			if err := s.proof.overdue(now); err != nil {
				return err
			}
		case data := <-s.frames:
			if err := s.receive(sctx, data); err != nil {
				return err
			}
			if s.joined {
				joinTimer.Stop()
			}
			switch {
			case s.subbed && subArmed:
				subTimer.Stop()
				subArmed = false
			case !s.subbed && !subArmed:
				subTimer.Reset(cfg.SubscribeTimeout)
				subArmed = true
			}
		}
	}
}

// readFailed ends the session after the reader's error. Frames read before
// it (a system error and phx_close before the server hangs up) explain it
// better, so they are handled first.
func (s *session) readFailed(ctx, sctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for {
		select {
		case data := <-s.frames:
			if ferr := s.receive(sctx, data); ferr != nil {
				return ferr
			}
		default:
			return fmt.Errorf("realtime read: %w", err)
		}
	}
}

// heartbeat sends the next heartbeat; the previous one still unanswered
// means the server (or the path to it) is gone.
func (s *session) heartbeat(ctx context.Context) error {
	if s.pendingHB != "" {
		return &Error{Op: "heartbeat", Reason: fmt.Sprintf("no reply within %v", s.c.cfg.HeartbeatInterval)}
	}
	s.pendingHB = s.refs.next()
	return s.send(ctx, frame{Topic: topicPhoenix, Event: eventHeartbeat, Ref: s.pendingHB})
}

// receive handles one frame from the server.
func (s *session) receive(ctx context.Context, in inbound) error {
	c := s.c
	if in.binary {
		m, err := decodeBinary(in.data)
		if err != nil {
			c.log.Warn("realtime: dropping malformed binary frame", "err", err, "bytes", len(in.data))
			return nil
		}
		if m.Topic == c.topic && s.subbed {
			s.broadcast(m)
		}
		return nil
	}
	data := in.data
	f, err := decodeFrame(data)
	if err != nil {
		c.log.Warn("realtime: dropping malformed frame", "err", err, "bytes", len(data))
		return nil
	}
	if f.Topic == topicPhoenix {
		if f.Event == eventReply && f.Ref != "" && f.Ref == s.pendingHB {
			s.pendingHB = ""
		}
		return nil
	}
	if f.Topic != c.topic {
		c.log.Debug("realtime: frame for another topic", "topic", f.Topic, "event", f.Event)
		return nil
	}
	return s.handle(ctx, f)
}

func (s *session) send(ctx context.Context, f frame) error {
	b, err := encodeFrame(s.c.cfg.VSN, f)
	if err != nil {
		return fmt.Errorf("realtime encode %s: %w", f.Event, err)
	}
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := s.conn.Write(wctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("realtime send %s: %w", f.Event, err)
	}
	return nil
}

func (s *session) join(ctx context.Context) error {
	tok, gen := s.c.token()
	s.token, s.c.usedGen = tok, gen
	s.joinRef = s.refs.next()
	payload := map[string]any{
		"config": map[string]any{
			"broadcast":        map[string]any{"ack": false, "self": false},
			"presence":         map[string]any{"key": "", "enabled": false},
			"postgres_changes": s.c.binds,
			"private":          s.c.cfg.Mode == ModeBroadcast,
		},
		"access_token": tok,
	}
	b, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("realtime join payload: %w", err)
	}
	return s.send(ctx, frame{Topic: s.c.topic, Event: eventJoin, Ref: s.joinRef, JoinRef: s.joinRef, Payload: b})
}

// pushToken sends a token set by SetAccessToken to the joined channel. Before
// the join reply it waits: the next join uses the new token anyway, and a
// push now could race the join.
func (s *session) pushToken(ctx context.Context) error {
	tok, gen := s.c.token()
	if !s.joined || tok == s.token {
		return nil
	}
	b, err := json.Marshal(map[string]string{"access_token": tok})
	if err != nil {
		return fmt.Errorf("realtime token payload: %w", err)
	}
	if err := s.send(ctx, frame{Topic: s.c.topic, Event: eventAccessToken, Ref: s.refs.next(), JoinRef: s.joinRef, Payload: b}); err != nil {
		return err
	}
	s.token, s.c.usedGen = tok, gen
	s.c.log.Info("realtime: access token refreshed on the channel")
	return nil
}

// ours says whether a lifecycle message belongs to the current join: v1
// servers put the join ref in ref, v2 in join_ref.
func (s *session) ours(f frame) bool {
	if f.JoinRef != "" {
		return f.JoinRef == s.joinRef
	}
	return f.Ref == s.joinRef
}

// handle acts on one message of the node's channel.
func (s *session) handle(ctx context.Context, f frame) error {
	switch f.Event {
	case eventReply:
		if s.joined || f.Ref != s.joinRef {
			return nil
		}
		return s.joinReply(ctx, f.Payload)

	case eventSystem:
		var sp systemPayload
		if err := unmarshal(f.Payload, &sp); err != nil {
			s.c.log.Warn("realtime: malformed system message", "err", err)
			return nil
		}
		return s.system(sp)

	case eventClose:
		if !s.ours(f) {
			return nil
		}
		reason := "channel closed by the server"
		if s.sysErr != "" {
			reason += " after: " + s.sysErr
		}
		return &Error{Op: "channel", Reason: reason, Permanent: tokenProblem(s.sysErr), kind: ErrChannelClosed}

	case eventError:
		if !s.ours(f) {
			return nil
		}
		return &Error{Op: "channel", Reason: "channel crashed on the server (phx_error)", kind: ErrChannelCrashed}

	case eventChanges:
		s.changes(f.Payload)
		return nil

	case eventBroadcast:
		var tb textBroadcast
		if err := unmarshal(f.Payload, &tb); err != nil {
			s.c.log.Warn("realtime: malformed broadcast", "err", err)
			return nil
		}
		if s.subbed {
			s.broadcast(broadcastMsg{Topic: f.Topic, Event: tb.Event, Payload: tb.Payload})
		}
		return nil
	}
	s.c.log.Debug("realtime: ignoring event", "event", f.Event)
	return nil
}

// joinReply handles the reply to our join: an error reply ends the
// session, an ok one must echo our bindings.
func (s *session) joinReply(ctx context.Context, payload json.RawMessage) error {
	var rp replyPayload
	if err := unmarshal(payload, &rp); err != nil {
		return &Error{Op: "join", Reason: "malformed reply: " + err.Error()}
	}
	if rp.Status != "ok" {
		var why struct {
			Reason string `json:"reason"`
		}
		_ = unmarshal(rp.Response, &why)
		if why.Reason == "" {
			why.Reason = "status " + rp.Status
		}
		return joinError(why.Reason)
	}
	if err := s.checkBindings(rp.Response); err != nil {
		return err
	}
	s.joined = true
	if s.c.cfg.Mode == ModeBroadcast {
		// A broadcast channel delivers from its ok reply on.
		s.subscribed("joined the private topic")
	} else {
		s.c.log.Debug("realtime: joined; waiting for the subscription", "topic", s.c.topic)
	}
	// A token set while the join was in flight goes out now.
	return s.pushToken(ctx)
}

func (s *session) checkBindings(raw json.RawMessage) error {
	var jr joinResponse
	if err := unmarshal(raw, &jr); err != nil {
		return &Error{Op: "join", Reason: "malformed join response: " + err.Error()}
	}
	if len(jr.PostgresChanges) != len(s.c.binds) {
		return &Error{Op: "join", Permanent: true,
			Reason: fmt.Sprintf("server echoed %d postgres_changes bindings, sent %d", len(jr.PostgresChanges), len(s.c.binds))}
	}
	for i, got := range jr.PostgresChanges {
		want := s.c.binds[i]
		if got.Event != want.Event || got.Schema != want.Schema || got.Table != want.Table || got.Filter != want.Filter {
			return &Error{Op: "join", Permanent: true,
				Reason: fmt.Sprintf("binding %d mismatch between server and client: got %s %s.%s %q", i, got.Event, got.Schema, got.Table, got.Filter)}
		}
		if _, err := got.ID.Int64(); err != nil {
			return &Error{Op: "join", Reason: fmt.Sprintf("binding %d: id %q is not an integer", i, got.ID)}
		}
		s.ids[got.ID.String()] = i
	}
	return nil
}

// subscribed marks the channel live: from now on changes flow.
func (s *session) subscribed(msg string) {
	c := s.c
	s.subbed, s.live = true, true
	c.log.Info("realtime: subscription live", "topic", c.topic, "message", msg)
	c.state(State{Phase: Live, Sessions: s.n})
	// Nothing is replayed: whatever changed before now may be missing.
	c.sink.Add(events.Event{Kind: events.Resync, Source: "realtime"})
}

func (s *session) system(sp systemPayload) error {
	c := s.c
	if sp.Extension != "postgres_changes" || s.c.cfg.Mode == ModeBroadcast {
		if sp.Status == "error" {
			// The server follows this with phx_close; remember why.
			s.sysErr = sp.Message
			c.log.Error("realtime: channel error from the server", "extension", sp.Extension, "message", sp.Message)
		}
		return nil
	}
	if sp.Status == "ok" {
		s.subscribed(sp.Message)
		return nil
	}
	err := &Error{Op: "subscribe", Reason: sp.Message, Permanent: permanentSubscribe(sp.Message)}
	if err.Permanent {
		// The server never retries these: leave and come back slowly.
		return err
	}
	// The server retries the subscription itself every few seconds; the
	// next "Subscribed" triggers a resync.
	s.subbed = false
	c.log.Warn("realtime: subscription not live; the server retries", "message", sp.Message)
	c.state(State{Phase: Joining, Err: err, Sessions: s.n})
	return nil
}
