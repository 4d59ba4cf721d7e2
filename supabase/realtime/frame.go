package realtime

// Phoenix channel framing as the Supabase Realtime server speaks it.
// vsn 1.0.0 frames are JSON objects {"topic","event","payload","ref","join_ref"};
// vsn 2.0.0 frames are arrays [join_ref, ref, topic, event, payload]. The
// decoder accepts both whatever vsn was requested, so a server that answers in
// the other framing still works. Binary frames (v2 broadcasts) are decoded
// in broadcast.go.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Protocol versions the client can request.
const (
	VSN1 = "1.0.0"
	VSN2 = "2.0.0"
)

// Channel event names.
const (
	eventJoin        = "phx_join"
	eventLeave       = "phx_leave"
	eventReply       = "phx_reply"
	eventClose       = "phx_close"
	eventError       = "phx_error"
	eventHeartbeat   = "heartbeat"
	eventAccessToken = "access_token"
	eventSystem      = "system"
	eventChanges     = "postgres_changes"
	eventBroadcast   = "broadcast"
	topicPhoenix     = "phoenix"
)

// frame is one decoded channel message. Refs are kept as strings; a
// missing or null ref is "".
type frame struct {
	JoinRef string
	Ref     string
	Topic   string
	Event   string
	Payload json.RawMessage
}

var errMalformed = errors.New("malformed realtime frame")

// decodeFrame decodes one text frame of either framing.
func decodeFrame(data []byte) (frame, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return frame{}, fmt.Errorf("%w: empty", errMalformed)
	}
	switch data[0] {
	case '{':
		return decodeV1(data)
	case '[':
		return decodeV2(data)
	}
	return frame{}, fmt.Errorf("%w: neither object nor array", errMalformed)
}

func decodeV1(data []byte) (frame, error) {
	var m struct {
		Topic   *string         `json:"topic"`
		Event   *string         `json:"event"`
		Payload json.RawMessage `json:"payload"`
		Ref     json.RawMessage `json:"ref"`
		JoinRef json.RawMessage `json:"join_ref"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return frame{}, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if m.Topic == nil || m.Event == nil {
		return frame{}, fmt.Errorf("%w: topic or event missing", errMalformed)
	}
	f := frame{Topic: *m.Topic, Event: *m.Event, Payload: m.Payload}
	var err error
	if f.Ref, err = decodeRef(m.Ref); err != nil {
		return frame{}, err
	}
	if f.JoinRef, err = decodeRef(m.JoinRef); err != nil {
		return frame{}, err
	}
	return f, nil
}

func decodeV2(data []byte) (frame, error) {
	var a []json.RawMessage
	if err := json.Unmarshal(data, &a); err != nil {
		return frame{}, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if len(a) != 5 {
		return frame{}, fmt.Errorf("%w: array of %d elements, want 5", errMalformed, len(a))
	}
	var f frame
	var err error
	if f.JoinRef, err = decodeRef(a[0]); err != nil {
		return frame{}, err
	}
	if f.Ref, err = decodeRef(a[1]); err != nil {
		return frame{}, err
	}
	if err := json.Unmarshal(a[2], &f.Topic); err != nil {
		return frame{}, fmt.Errorf("%w: topic: %v", errMalformed, err)
	}
	if err := json.Unmarshal(a[3], &f.Event); err != nil {
		return frame{}, fmt.Errorf("%w: event: %v", errMalformed, err)
	}
	f.Payload = a[4]
	return f, nil
}

// decodeRef reads a ref that servers send as a string, a number or null.
func decodeRef(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("%w: ref: %v", errMalformed, err)
		}
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", fmt.Errorf("%w: ref: %v", errMalformed, err)
	}
	return n.String(), nil
}

// encodeFrame encodes an outgoing message in the requested framing. A
// null ref stays null (refs are only omitted by servers).
func encodeFrame(vsn string, f frame) ([]byte, error) {
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
	if vsn == VSN2 {
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

// unmarshal decodes a payload keeping numbers exact (int8, numeric).
func unmarshal(raw json.RawMessage, v any) error {
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

// replyPayload is the payload of a phx_reply.
type replyPayload struct {
	Status   string          `json:"status"`
	Response json.RawMessage `json:"response"`
}

// joinResponse is the response of a successful join.
type joinResponse struct {
	PostgresChanges []bindingReply `json:"postgres_changes"`
}

type bindingReply struct {
	ID     json.Number `json:"id"`
	Event  string      `json:"event"`
	Schema string      `json:"schema"`
	Table  string      `json:"table"`
	Filter string      `json:"filter"`
}

// systemPayload is a "system" message: subscription status or a channel
// error the server is about to act on.
type systemPayload struct {
	Channel   string `json:"channel"`
	Extension string `json:"extension"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

// changePayload is a postgres_changes message.
type changePayload struct {
	IDs  []json.Number `json:"ids"`
	Data change        `json:"data"`
}

type change struct {
	Schema          string          `json:"schema"`
	Table           string          `json:"table"`
	Type            string          `json:"type"`
	CommitTimestamp string          `json:"commit_timestamp"`
	Columns         []column        `json:"columns"`
	Record          map[string]any  `json:"record"`
	OldRecord       map[string]any  `json:"old_record"`
	Errors          json.RawMessage `json:"errors"`
}

type column struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// errs returns the change's errors; null and [] mean none. Anything
// else non-empty (an array of strings, a bare string) counts as an error.
func (c *change) errs() []string {
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

// refCounter numbers outgoing messages; refs are decimal strings like
// realtime-js sends.
type refCounter struct{ n uint64 }

func (r *refCounter) next() string {
	r.n++
	return strconv.FormatUint(r.n, 10)
}
