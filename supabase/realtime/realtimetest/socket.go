package realtimetest

// One websocket connection: Phoenix framing, heartbeats, joins, token
// refreshes and channel lifecycle, with the real server's shapes:
// v1 server frames carry topic/event/payload/ref only (phx_close and
// phx_error put the join ref in ref); v2 frames are
// [join_ref, ref, topic, event, payload].

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

type socket struct {
	srv    *Server
	conn   *websocket.Conn
	vsn    string
	apikey string
	out    chan outFrame
	done   chan struct{}
	ctx    context.Context // ends when the socket closes

	mu struct {
		sync.Mutex
		channels map[string]*channel // by topic
	}
}

// outFrame is one queued frame: text, or binary (v2 broadcasts).
type outFrame struct {
	binary bool
	b      []byte
}

// channel is one joined topic.
type channel struct {
	topic    string
	joinRef  string
	private  bool // joined with config.private: receives private broadcasts
	deaf     bool // SetDeaf: joined, and nothing delivered
	bindings []binding
	subbed   bool // "Subscribed to PostgreSQL" sent: changes flow
	claims   claims
	expiry   *time.Timer
}

// binding is one postgres_changes entry of a join.
type binding struct {
	id     int64
	echo   map[string]any // the entry as the client sent it, plus id
	event  string         // "*", "INSERT", "UPDATE", "DELETE"
	schema string
	table  string
	filter *filter
	ferr   error // invalid filter: reported by the subscription, like the real server
	raw    string
}

type inFrame struct {
	joinRef, ref *string
	topic, event string
	payload      json.RawMessage
}

func (so *socket) run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	so.ctx = ctx
	go so.writer(ctx)
	defer func() {
		cancel()
		so.conn.CloseNow()
		<-so.done
		for _, ch := range so.channelList() {
			so.dropChannel(ch)
		}
	}()
	for {
		rctx, rcancel := context.WithTimeout(ctx, so.srv.cfg.IdleTimeout)
		typ, data, err := so.conn.Read(rctx)
		rcancel()
		if err != nil {
			return
		}
		if typ != websocket.MessageText {
			continue
		}
		f, err := so.decode(data)
		if err != nil {
			// The real server drops malformed frames.
			so.srv.log.Debug("realtimetest: malformed frame dropped", "err", err)
			continue
		}
		so.handle(f)
	}
}

func (so *socket) writer(ctx context.Context) {
	defer close(so.done)
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-so.out:
			typ := websocket.MessageText
			if f.binary {
				typ = websocket.MessageBinary
			}
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := so.conn.Write(wctx, typ, f.b)
			cancel()
			if err != nil {
				so.conn.CloseNow()
				return
			}
		}
	}
}

// enqueue queues a text frame; a client too slow to drain 4096 frames is
// cut off.
func (so *socket) enqueue(b []byte) { so.enqueueFrame(outFrame{b: b}) }

func (so *socket) enqueueFrame(f outFrame) {
	select {
	case so.out <- f:
	default:
		so.conn.CloseNow()
	}
}

func (so *socket) decode(data []byte) (inFrame, error) {
	data = bytes.TrimSpace(data)
	var f inFrame
	if so.vsn == "2.0.0" {
		var a []json.RawMessage
		if err := json.Unmarshal(data, &a); err != nil || len(a) != 5 {
			return f, fmt.Errorf("want a 5-element array")
		}
		json.Unmarshal(a[0], &f.joinRef)
		json.Unmarshal(a[1], &f.ref)
		if json.Unmarshal(a[2], &f.topic) != nil || json.Unmarshal(a[3], &f.event) != nil {
			return f, fmt.Errorf("topic and event must be strings")
		}
		f.payload = a[4]
		return f, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return f, err
	}
	for _, k := range []string{"topic", "event", "payload", "ref"} {
		if _, ok := m[k]; !ok {
			return f, fmt.Errorf("missing %s", k)
		}
	}
	if json.Unmarshal(m["topic"], &f.topic) != nil || json.Unmarshal(m["event"], &f.event) != nil {
		return f, fmt.Errorf("topic and event must be strings")
	}
	if json.Unmarshal(m["ref"], &f.ref) != nil {
		return f, fmt.Errorf("ref must be a string or null")
	}
	if jr, ok := m["join_ref"]; ok {
		json.Unmarshal(jr, &f.joinRef)
	}
	f.payload = m["payload"]
	return f, nil
}

func strp(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// push encodes and queues one frame. joinRef is only written in v2.
func (so *socket) push(joinRef, ref *string, topic, event string, payload any) {
	var b []byte
	if so.vsn == "2.0.0" {
		b, _ = json.Marshal([]any{joinRef, ref, topic, event, payload})
	} else {
		b, _ = json.Marshal(struct {
			Topic   string  `json:"topic"`
			Event   string  `json:"event"`
			Payload any     `json:"payload"`
			Ref     *string `json:"ref"`
		}{topic, event, payload, ref})
	}
	so.enqueue(b)
}

func (so *socket) reply(f inFrame, status string, response any) {
	so.push(f.joinRef, f.ref, f.topic, "phx_reply", map[string]any{"status": status, "response": response})
}

func (so *socket) channelList() []*channel {
	so.mu.Lock()
	defer so.mu.Unlock()
	out := make([]*channel, 0, len(so.mu.channels))
	for _, ch := range so.mu.channels {
		out = append(out, ch)
	}
	return out
}

func (so *socket) handle(f inFrame) {
	srv := so.srv
	if f.topic == "phoenix" && f.event == "heartbeat" {
		srv.mu.Lock()
		silent := srv.mu.noHeartbeat
		srv.mu.Unlock()
		if !silent {
			so.reply(f, "ok", map[string]any{})
		}
		return
	}
	so.mu.Lock()
	ch := so.mu.channels[f.topic]
	so.mu.Unlock()
	if f.event == "phx_join" {
		srv.mu.Lock()
		ignore := srv.mu.noJoinReply
		srv.mu.joinTimes = append(srv.mu.joinTimes, time.Now())
		srv.mu.Unlock()
		if !ignore {
			so.join(f, ch)
		}
		return
	}
	if ch == nil || (f.joinRef != nil && *f.joinRef != ch.joinRef) {
		so.reply(f, "error", map[string]any{"reason": "unmatched topic"})
		return
	}
	switch f.event {
	case "access_token":
		var p struct {
			AccessToken string `json:"access_token"`
		}
		json.Unmarshal(f.payload, &p)
		if p.AccessToken == "" || strings.HasPrefix(p.AccessToken, "sb_") {
			return
		}
		c, err := srv.keys.verify(p.AccessToken, time.Now())
		if err != nil {
			msg := err.Error()
			if je, ok := err.(*jwtError); ok {
				msg = je.closeText()
			}
			so.closeChannel(ch, "phx_close", msg)
			return
		}
		so.mu.Lock()
		ch.claims = c
		so.armExpiry(ch)
		so.mu.Unlock()
	case "phx_leave":
		so.reply(f, "ok", map[string]any{})
		so.closeChannel(ch, "phx_close", "")
	default:
		// broadcast, presence: not part of this server
	}
}

// armExpiry closes the channel when its token expires, as the real server
// does. so.mu must be held.
func (so *socket) armExpiry(ch *channel) {
	if ch.expiry != nil {
		ch.expiry.Stop()
	}
	ch.expiry = time.AfterFunc(time.Until(ch.claims.exp), func() {
		so.closeChannel(ch, "phx_close", fmt.Sprintf("Token has expired %d seconds ago", int64(time.Since(ch.claims.exp).Seconds())))
	})
}

// closeChannel ends ch: an optional system error first, then event
// (phx_close or phx_error) carrying the join ref.
func (so *socket) closeChannel(ch *channel, event, sysErr string) {
	so.mu.Lock()
	if so.mu.channels[ch.topic] != ch {
		so.mu.Unlock()
		return
	}
	delete(so.mu.channels, ch.topic)
	so.mu.Unlock()
	so.dropChannel(ch)
	if sysErr != "" {
		so.push(strp(ch.joinRef), nil, ch.topic, "system", map[string]any{
			"channel": strings.TrimPrefix(ch.topic, "realtime:"), "extension": "system", "status": "error", "message": sysErr,
		})
	}
	so.push(strp(ch.joinRef), strp(ch.joinRef), ch.topic, event, map[string]any{})
}

func (so *socket) dropChannel(ch *channel) {
	so.mu.Lock()
	if ch.expiry != nil {
		ch.expiry.Stop()
	}
	ch.subbed = false
	so.mu.Unlock()
}

// bindingID is stable per parameters, like the real server's phash2.
func bindingID(event, schema, table, filter string) int64 {
	h := fnv.New32a()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s", event, schema, table, filter)
	return int64(h.Sum32() & 0x7fffffff)
}

// parseBindings reads a join's postgres_changes entries; echo is what the
// reply sends back: each entry as the client sent it, plus its id.
func parseBindings(entries []map[string]any) (bindings []binding, echo []map[string]any) {
	echo = []map[string]any{}
	for _, pc := range entries {
		str := func(k string) string { s, _ := pc[k].(string); return s }
		b := binding{event: strings.ToUpper(str("event")), schema: str("schema"), table: str("table"), raw: str("filter")}
		if b.schema == "" {
			b.schema = "public"
		}
		b.filter, b.ferr = parseFilter(b.raw)
		b.id = bindingID(str("event"), str("schema"), str("table"), b.raw)
		e := map[string]any{"id": b.id}
		for k, v := range pc {
			e[k] = v
		}
		b.echo = e
		bindings = append(bindings, b)
		echo = append(echo, e)
	}
	return bindings, echo
}

// join answers a phx_join like the real server: topic, payload and token
// checked (errors after ErrorReplyDelay), a second join replacing the
// first, the subscription checked in the background.
func (so *socket) join(f inFrame, old *channel) {
	srv := so.srv
	sub, ok := strings.CutPrefix(f.topic, "realtime:")
	if !ok || sub == "" {
		time.Sleep(srv.cfg.ErrorReplyDelay)
		so.reply(f, "error", map[string]any{"reason": "TopicNameRequired: You must provide a topic name"})
		return
	}
	if old != nil {
		// A second join of a topic closes the first.
		so.closeChannel(old, "phx_close", "")
	}
	var p struct {
		Config struct {
			PostgresChanges []map[string]any `json:"postgres_changes"`
			Private         bool             `json:"private"`
		} `json:"config"`
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(f.payload, &p); err != nil {
		time.Sleep(srv.cfg.ErrorReplyDelay)
		so.reply(f, "error", map[string]any{"reason": "MalformedChannelPayload: " + err.Error()})
		return
	}
	c, err := srv.joinClaims(p.AccessToken, so.apikey, time.Now())
	if err != nil {
		time.Sleep(srv.cfg.ErrorReplyDelay)
		so.reply(f, "error", map[string]any{"reason": err.Error()})
		return
	}
	if reason := srv.joinRefusal(sub, p.Config.Private, c); reason != "" {
		time.Sleep(srv.cfg.ErrorReplyDelay)
		so.reply(f, "error", map[string]any{"reason": reason})
		return
	}
	joinRef := ""
	if f.joinRef != nil {
		joinRef = *f.joinRef
	} else if f.ref != nil {
		joinRef = *f.ref
	}
	ch := &channel{topic: f.topic, joinRef: joinRef, claims: c, private: p.Config.Private}
	var echo []map[string]any
	ch.bindings, echo = parseBindings(p.Config.PostgresChanges)
	so.mu.Lock()
	so.mu.channels[f.topic] = ch
	so.armExpiry(ch)
	so.mu.Unlock()
	srv.joins.Add(1)
	so.reply(f, "ok", map[string]any{"postgres_changes": echo})
	if len(ch.bindings) > 0 {
		go so.subscribe(ch)
	}
}

// subscribe checks the bindings like the real server's subscription insert
// and reports the result as a system message.
func (so *socket) subscribe(ch *channel) {
	srv := so.srv
	srv.mu.Lock()
	delay := srv.mu.subDelay
	srv.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-so.ctx.Done():
			return
		}
	}
	for {
		ctx, cancel := context.WithTimeout(so.ctx, 10*time.Second)
		err := srv.refreshTables(ctx)
		for _, b := range ch.bindings {
			if err != nil {
				break
			}
			err = srv.checkBinding(ctx, b, ch.claims.role)
		}
		cancel()
		so.mu.Lock()
		current := so.mu.channels[ch.topic] == ch
		if current && err == nil {
			ch.subbed = true
		}
		so.mu.Unlock()
		if !current {
			return
		}
		msg := map[string]any{"channel": strings.TrimPrefix(ch.topic, "realtime:"), "extension": "postgres_changes", "status": "ok", "message": "Subscribed to PostgreSQL"}
		if err != nil {
			msg["status"], msg["message"] = "error", err.Error()
		}
		so.push(strp(ch.joinRef), nil, ch.topic, "system", msg)
		if err == nil || strings.HasPrefix(err.Error(), "Unable to subscribe") {
			return // live, or an error the real server never retries
		}
		// Transient: the real server retries every 5-10 s; a second here.
		t := time.NewTimer(time.Second)
		select {
		case <-t.C:
		case <-so.ctx.Done():
			t.Stop()
			return
		}
	}
}
