package supabase

// Phoenix channel framing as the Supabase Realtime server speaks it.
// vsn 1.0.0 frames are JSON objects {"topic","event","payload","ref","join_ref"};
// vsn 2.0.0 frames are arrays [join_ref, ref, topic, event, payload]. The
// decoder accepts both whatever vsn was requested, so a server that answers in
// the other framing still works. Binary frames (v2 broadcasts) never reach
// this code: the read loop drops them.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Protocol versions the client can request.
const (
	RealtimeVSN1 = "1.0.0"
	RealtimeVSN2 = "2.0.0"
)

// Channel event names.
const (
	rtEventJoin        = "phx_join"
	rtEventLeave       = "phx_leave"
	rtEventReply       = "phx_reply"
	rtEventClose       = "phx_close"
	rtEventError       = "phx_error"
	rtEventHeartbeat   = "heartbeat"
	rtEventAccessToken = "access_token"
	rtEventSystem      = "system"
	rtEventChanges     = "postgres_changes"
	rtTopicPhoenix     = "phoenix"
)

// rtFrame is one decoded channel message. Refs are kept as strings; a
// missing or null ref is "".
type rtFrame struct {
	JoinRef string
	Ref     string
	Topic   string
	Event   string
	Payload json.RawMessage
}

var errRTMalformed = errors.New("malformed realtime frame")

// rtDecodeFrame decodes one text frame of either framing.
func rtDecodeFrame(data []byte) (rtFrame, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return rtFrame{}, fmt.Errorf("%w: empty", errRTMalformed)
	}
	switch data[0] {
	case '{':
		return rtDecodeV1(data)
	case '[':
		return rtDecodeV2(data)
	}
	return rtFrame{}, fmt.Errorf("%w: neither object nor array", errRTMalformed)
}

func rtDecodeV1(data []byte) (rtFrame, error) {
	var m struct {
		Topic   *string         `json:"topic"`
		Event   *string         `json:"event"`
		Payload json.RawMessage `json:"payload"`
		Ref     json.RawMessage `json:"ref"`
		JoinRef json.RawMessage `json:"join_ref"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return rtFrame{}, fmt.Errorf("%w: %v", errRTMalformed, err)
	}
	if m.Topic == nil || m.Event == nil {
		return rtFrame{}, fmt.Errorf("%w: topic or event missing", errRTMalformed)
	}
	f := rtFrame{Topic: *m.Topic, Event: *m.Event, Payload: m.Payload}
	var err error
	if f.Ref, err = rtRef(m.Ref); err != nil {
		return rtFrame{}, err
	}
	if f.JoinRef, err = rtRef(m.JoinRef); err != nil {
		return rtFrame{}, err
	}
	return f, nil
}

func rtDecodeV2(data []byte) (rtFrame, error) {
	var a []json.RawMessage
	if err := json.Unmarshal(data, &a); err != nil {
		return rtFrame{}, fmt.Errorf("%w: %v", errRTMalformed, err)
	}
	if len(a) != 5 {
		return rtFrame{}, fmt.Errorf("%w: array of %d elements, want 5", errRTMalformed, len(a))
	}
	var f rtFrame
	var err error
	if f.JoinRef, err = rtRef(a[0]); err != nil {
		return rtFrame{}, err
	}
	if f.Ref, err = rtRef(a[1]); err != nil {
		return rtFrame{}, err
	}
	if err := json.Unmarshal(a[2], &f.Topic); err != nil {
		return rtFrame{}, fmt.Errorf("%w: topic: %v", errRTMalformed, err)
	}
	if err := json.Unmarshal(a[3], &f.Event); err != nil {
		return rtFrame{}, fmt.Errorf("%w: event: %v", errRTMalformed, err)
	}
	f.Payload = a[4]
	return f, nil
}

// rtRef reads a ref that servers send as a string, a number or null.
func rtRef(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("%w: ref: %v", errRTMalformed, err)
		}
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", fmt.Errorf("%w: ref: %v", errRTMalformed, err)
	}
	return n.String(), nil
}

// rtEncodeFrame encodes an outgoing message in the requested framing. A
// null ref stays null (refs are only omitted by servers).
func rtEncodeFrame(vsn string, f rtFrame) ([]byte, error) {
	payload := f.Payload
	if len(payload) == 0 {
		payload = json.RawMessage("{}")
	}
	ref := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	if vsn == RealtimeVSN2 {
		return json.Marshal([]any{ref(f.JoinRef), ref(f.Ref), f.Topic, f.Event, payload})
	}
	m := struct {
		Topic   string          `json:"topic"`
		Event   string          `json:"event"`
		Payload json.RawMessage `json:"payload"`
		Ref     any             `json:"ref"`
		JoinRef any             `json:"join_ref,omitempty"`
	}{f.Topic, f.Event, payload, ref(f.Ref), ref(f.JoinRef)}
	return json.Marshal(m)
}

// rtUnmarshal decodes a payload keeping numbers exact (int8, numeric).
func rtUnmarshal(raw json.RawMessage, v any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data after payload")
	}
	return nil
}

// rtReplyPayload is the payload of a phx_reply.
type rtReplyPayload struct {
	Status   string          `json:"status"`
	Response json.RawMessage `json:"response"`
}

// rtJoinResponse is the response of a successful join.
type rtJoinResponse struct {
	PostgresChanges []rtBindingReply `json:"postgres_changes"`
}

type rtBindingReply struct {
	ID     json.Number `json:"id"`
	Event  string      `json:"event"`
	Schema string      `json:"schema"`
	Table  string      `json:"table"`
	Filter string      `json:"filter"`
}

// rtSystemPayload is a "system" message: subscription status or a channel
// error the server is about to act on.
type rtSystemPayload struct {
	Channel   string `json:"channel"`
	Extension string `json:"extension"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

// rtChangePayload is a postgres_changes message.
type rtChangePayload struct {
	IDs  []json.Number `json:"ids"`
	Data rtChange      `json:"data"`
}

type rtChange struct {
	Schema          string          `json:"schema"`
	Table           string          `json:"table"`
	Type            string          `json:"type"`
	CommitTimestamp string          `json:"commit_timestamp"`
	Columns         []rtColumn      `json:"columns"`
	Record          map[string]any  `json:"record"`
	OldRecord       map[string]any  `json:"old_record"`
	Errors          json.RawMessage `json:"errors"`
}

type rtColumn struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// rtErrors returns the change's errors; null and [] mean none. Anything
// else non-empty (an array of strings, a bare string) counts as an error.
func (c *rtChange) rtErrors() []string {
	raw := bytes.TrimSpace(c.Errors)
	if len(raw) == 0 || string(raw) == "null" || string(raw) == "[]" {
		return nil
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		return list
	}
	var one string
	if json.Unmarshal(raw, &one) == nil && one != "" {
		return []string{one}
	}
	return []string{string(raw)}
}

// rtRefs numbers outgoing messages; refs are decimal strings like
// realtime-js sends.
type rtRefs struct{ n uint64 }

func (r *rtRefs) next() string {
	r.n++
	return strconv.FormatUint(r.n, 10)
}
