package supabase

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
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/waylume/waylume-node/events"
)

type rtSession struct {
	r       *Realtime
	conn    *websocket.Conn
	refs    rtRefs
	joinRef string
	ids     map[string]int // binding id from the join reply -> index in r.binds
	token   string         // the token the server holds for this channel
	joined  bool           // ok reply received
	subbed  bool           // "Subscribed to PostgreSQL" received and not revoked
	live    bool           // subscribed at least once in this session
	n       int            // session number, for OnState
	sysErr  string         // last system error text, explains a following phx_close
}

// session runs one connection until it fails or ctx ends. live reports
// whether the subscription became live at least once.
func (r *Realtime) session(ctx context.Context, n int) (live bool, err error) {
	r.state(RealtimeState{Phase: RealtimeConnecting, Sessions: n})
	dctx, dcancel := context.WithTimeout(ctx, r.cfg.JoinTimeout)
	conn, resp, err := websocket.Dial(dctx, r.dialURL(), &websocket.DialOptions{})
	dcancel()
	if err != nil {
		return false, rtUpgradeError(resp, err)
	}
	conn.SetReadLimit(rtReadLimit)

	sctx, cancel := context.WithCancel(ctx)
	frames := make(chan []byte, 64)
	readErr := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			typ, data, err := conn.Read(sctx)
			if err != nil {
				readErr <- err
				return
			}
			if typ != websocket.MessageText {
				continue // v2 binary frames carry broadcasts only
			}
			select {
			case frames <- data:
			case <-sctx.Done():
				return
			}
		}
	}()

	push := make(chan struct{}, 1)
	r.mu.Lock()
	r.mu.push = push
	r.mu.Unlock()

	s := &rtSession{r: r, conn: conn, n: n, ids: map[string]int{}}
	defer func() {
		r.mu.Lock()
		r.mu.push = nil
		r.mu.Unlock()
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
	r.state(RealtimeState{Phase: RealtimeJoining, Sessions: n})

	joinTimer := time.NewTimer(r.cfg.JoinTimeout)
	defer joinTimer.Stop()
	// Armed while joined but not subscribed: a server that never sends
	// "Subscribed" (nor retries) would otherwise leave us joined and deaf.
	subTimer := time.NewTimer(r.cfg.SubscribeTimeout)
	defer subTimer.Stop()
	subArmed := true
	hb := time.NewTicker(r.cfg.HeartbeatInterval)
	defer hb.Stop()
	pendingHB := ""

	for {
		select {
		case <-ctx.Done():
			return s.live, ctx.Err()
		case err := <-readErr:
			if ctx.Err() != nil {
				return s.live, ctx.Err()
			}
			// Frames read before the error (a system error and phx_close
			// before the server hangs up) explain it better: handle them.
			for {
				select {
				case data := <-frames:
					if ferr := s.frame(sctx, data, &pendingHB); ferr != nil {
						return s.live, ferr
					}
					continue
				default:
				}
				break
			}
			return s.live, fmt.Errorf("realtime read: %w", err)
		case <-joinTimer.C:
			if !s.joined {
				return s.live, &RealtimeError{Op: "join", Reason: fmt.Sprintf("no reply within %v", r.cfg.JoinTimeout)}
			}
		case <-subTimer.C:
			subArmed = false
			if !s.subbed {
				return s.live, &RealtimeError{Op: "subscribe", Reason: fmt.Sprintf("not subscribed to PostgreSQL within %v", r.cfg.SubscribeTimeout)}
			}
		case <-hb.C:
			if pendingHB != "" {
				return s.live, &RealtimeError{Op: "heartbeat", Reason: fmt.Sprintf("no reply within %v", r.cfg.HeartbeatInterval)}
			}
			pendingHB = s.refs.next()
			if err := s.send(sctx, rtFrame{Topic: rtTopicPhoenix, Event: rtEventHeartbeat, Ref: pendingHB}); err != nil {
				return s.live, err
			}
		case <-push:
			if err := s.pushToken(sctx); err != nil {
				return s.live, err
			}
		case data := <-frames:
			if err := s.frame(sctx, data, &pendingHB); err != nil {
				return s.live, err
			}
			if s.joined {
				joinTimer.Stop()
			}
			switch {
			case s.subbed && subArmed:
				subTimer.Stop()
				subArmed = false
			case !s.subbed && !subArmed:
				subTimer.Reset(r.cfg.SubscribeTimeout)
				subArmed = true
			}
		}
	}
}

// frame handles one text frame from the server.
func (s *rtSession) frame(ctx context.Context, data []byte, pendingHB *string) error {
	r := s.r
	f, err := rtDecodeFrame(data)
	if err != nil {
		r.log.Warn("realtime: dropping malformed frame", "err", err, "bytes", len(data))
		return nil
	}
	if f.Topic == rtTopicPhoenix {
		if f.Event == rtEventReply && f.Ref != "" && f.Ref == *pendingHB {
			*pendingHB = ""
		}
		return nil
	}
	if f.Topic != r.topic {
		r.log.Debug("realtime: frame for another topic", "topic", f.Topic, "event", f.Event)
		return nil
	}
	return s.handle(ctx, f)
}

func (s *rtSession) send(ctx context.Context, f rtFrame) error {
	b, err := rtEncodeFrame(s.r.cfg.VSN, f)
	if err != nil {
		return fmt.Errorf("realtime encode %s: %w", f.Event, err)
	}
	wctx, cancel := context.WithTimeout(ctx, rtWriteTimeout)
	defer cancel()
	if err := s.conn.Write(wctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("realtime send %s: %w", f.Event, err)
	}
	return nil
}

func (s *rtSession) join(ctx context.Context) error {
	tok, gen := s.r.token()
	s.token, s.r.usedGen = tok, gen
	s.joinRef = s.refs.next()
	payload := map[string]any{
		"config": map[string]any{
			"broadcast":        map[string]any{"ack": false, "self": false},
			"presence":         map[string]any{"key": "", "enabled": false},
			"postgres_changes": s.r.binds,
			"private":          false,
		},
		"access_token": tok,
	}
	b, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("realtime join payload: %w", err)
	}
	return s.send(ctx, rtFrame{Topic: s.r.topic, Event: rtEventJoin, Ref: s.joinRef, JoinRef: s.joinRef, Payload: b})
}

// pushToken sends a token set by SetAccessToken to the joined channel. Before
// the join reply it waits: the next join uses the new token anyway, and a
// push now could race the join.
func (s *rtSession) pushToken(ctx context.Context) error {
	tok, gen := s.r.token()
	if !s.joined || tok == s.token {
		return nil
	}
	b, err := json.Marshal(map[string]string{"access_token": tok})
	if err != nil {
		return fmt.Errorf("realtime token payload: %w", err)
	}
	if err := s.send(ctx, rtFrame{Topic: s.r.topic, Event: rtEventAccessToken, Ref: s.refs.next(), JoinRef: s.joinRef, Payload: b}); err != nil {
		return err
	}
	s.token, s.r.usedGen = tok, gen
	s.r.log.Info("realtime: access token refreshed on the channel")
	return nil
}

// ours says whether a lifecycle message belongs to the current join: v1
// servers put the join ref in ref, v2 in join_ref.
func (s *rtSession) ours(f rtFrame) bool {
	if f.JoinRef != "" {
		return f.JoinRef == s.joinRef
	}
	return f.Ref == s.joinRef
}

func (s *rtSession) handle(ctx context.Context, f rtFrame) error {
	r := s.r
	switch f.Event {
	case rtEventReply:
		if s.joined || f.Ref != s.joinRef {
			return nil
		}
		var rp rtReplyPayload
		if err := rtUnmarshal(f.Payload, &rp); err != nil {
			return &RealtimeError{Op: "join", Reason: "malformed reply: " + err.Error()}
		}
		if rp.Status != "ok" {
			var why struct {
				Reason string `json:"reason"`
			}
			_ = rtUnmarshal(rp.Response, &why)
			if why.Reason == "" {
				why.Reason = "status " + rp.Status
			}
			return rtJoinError(why.Reason)
		}
		if err := s.checkBindings(rp.Response); err != nil {
			return err
		}
		s.joined = true
		r.log.Debug("realtime: joined; waiting for the subscription", "topic", r.topic)
		// A token set while the join was in flight goes out now.
		return s.pushToken(ctx)

	case rtEventSystem:
		var sp rtSystemPayload
		if err := rtUnmarshal(f.Payload, &sp); err != nil {
			r.log.Warn("realtime: malformed system message", "err", err)
			return nil
		}
		return s.system(sp)

	case rtEventClose:
		if !s.ours(f) {
			return nil
		}
		reason := "channel closed by the server"
		if s.sysErr != "" {
			reason += " after: " + s.sysErr
		}
		return &RealtimeError{Op: "channel", Reason: reason, Permanent: rtTokenProblem(s.sysErr)}

	case rtEventError:
		if !s.ours(f) {
			return nil
		}
		return &RealtimeError{Op: "channel", Reason: "channel crashed on the server (phx_error)"}

	case rtEventChanges:
		s.changes(f.Payload)
		return nil
	}
	r.log.Debug("realtime: ignoring event", "event", f.Event)
	return nil
}

func (s *rtSession) checkBindings(raw json.RawMessage) error {
	var jr rtJoinResponse
	if err := rtUnmarshal(raw, &jr); err != nil {
		return &RealtimeError{Op: "join", Reason: "malformed join response: " + err.Error()}
	}
	if len(jr.PostgresChanges) != len(s.r.binds) {
		return &RealtimeError{Op: "join", Permanent: true,
			Reason: fmt.Sprintf("server echoed %d postgres_changes bindings, sent %d", len(jr.PostgresChanges), len(s.r.binds))}
	}
	for i, got := range jr.PostgresChanges {
		want := s.r.binds[i]
		if got.Event != want.Event || got.Schema != want.Schema || got.Table != want.Table || got.Filter != want.Filter {
			return &RealtimeError{Op: "join", Permanent: true,
				Reason: fmt.Sprintf("binding %d mismatch between server and client: got %s %s.%s %q", i, got.Event, got.Schema, got.Table, got.Filter)}
		}
		if _, err := got.ID.Int64(); err != nil {
			return &RealtimeError{Op: "join", Reason: fmt.Sprintf("binding %d: id %q is not an integer", i, got.ID)}
		}
		s.ids[got.ID.String()] = i
	}
	return nil
}

func rtTokenProblem(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "token") || strings.Contains(m, "jwt")
}

func (s *rtSession) system(sp rtSystemPayload) error {
	r := s.r
	if sp.Extension != "postgres_changes" {
		if sp.Status == "error" {
			// The server follows this with phx_close; remember why.
			s.sysErr = sp.Message
			r.log.Error("realtime: channel error from the server", "extension", sp.Extension, "message", sp.Message)
		}
		return nil
	}
	if sp.Status == "ok" {
		s.subbed, s.live = true, true
		r.log.Info("realtime: subscription live", "topic", r.topic, "message", sp.Message)
		r.state(RealtimeState{Phase: RealtimeLive, Sessions: s.n})
		// Nothing is replayed: whatever changed before now may be missing.
		r.sink.Add(events.Event{Kind: events.Resync, Source: "realtime"})
		return nil
	}
	err := &RealtimeError{Op: "subscribe", Reason: sp.Message, Permanent: rtPermanentSubscribe(sp.Message)}
	if err.Permanent {
		// The server never retries these: leave and come back slowly.
		return err
	}
	// The server retries the subscription itself every few seconds; the
	// next "Subscribed" triggers a resync.
	s.subbed = false
	r.log.Warn("realtime: subscription not live; the server retries", "message", sp.Message)
	r.state(RealtimeState{Phase: RealtimeJoining, Err: err, Sessions: s.n})
	return nil
}

// changes dispatches one postgres_changes message.
func (s *rtSession) changes(raw json.RawMessage) {
	r := s.r
	var cp rtChangePayload
	if err := rtUnmarshal(raw, &cp); err != nil {
		// Something changed and we cannot tell what: reread everything.
		r.log.Warn("realtime: undecodable change; resyncing", "err", err, "bytes", len(raw))
		r.sink.Add(events.Event{Kind: events.Resync, Source: "realtime"})
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
		r.log.Debug("realtime: change for no binding of ours", "ids", cp.IDs)
		return
	}
	b := r.binds[idx]
	d := &cp.Data
	if d.Schema != b.Schema || d.Table != b.Table {
		r.log.Warn("realtime: change routed to the wrong binding; resyncing", "table", d.Schema+"."+d.Table)
		r.sink.Add(events.Event{Kind: events.Resync, Source: "realtime"})
		return
	}
	switch d.Type {
	case "INSERT", "UPDATE", "DELETE":
	default:
		return // older servers send types we did not ask for
	}
	commit, _ := rtParseTime(d.CommitTimestamp)
	ev, ok := rtChangeEvent(r.cfg.NodeID, d, r.log)
	if !ok {
		r.sink.Add(events.Event{Kind: events.Resync, Source: "realtime", Commit: commit})
		return
	}
	if ev.Kind == 0 {
		return
	}
	ev.Source, ev.Commit = "realtime", commit
	r.sink.Add(ev)
}
