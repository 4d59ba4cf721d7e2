package realtime

import (
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDecodeFrame(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     frame
		err      bool
	}{
		{"v1 reply", `{"topic":"realtime:x","event":"phx_reply","payload":{"status":"ok"},"ref":"1"}`,
			frame{Topic: "realtime:x", Event: "phx_reply", Ref: "1", Payload: json.RawMessage(`{"status":"ok"}`)}, false},
		{"v1 null ref", `{"topic":"t","event":"system","payload":{},"ref":null}`,
			frame{Topic: "t", Event: "system", Payload: json.RawMessage(`{}`)}, false},
		{"v1 numeric ref", `{"topic":"t","event":"e","payload":{},"ref":12,"join_ref":"3"}`,
			frame{Topic: "t", Event: "e", Ref: "12", JoinRef: "3", Payload: json.RawMessage(`{}`)}, false},
		{"v2 push", `[null,null,"realtime:x","postgres_changes",{"ids":[1]}]`,
			frame{Topic: "realtime:x", Event: "postgres_changes", Payload: json.RawMessage(`{"ids":[1]}`)}, false},
		{"v2 close", `["4","4","realtime:x","phx_close",{}]`,
			frame{JoinRef: "4", Ref: "4", Topic: "realtime:x", Event: "phx_close", Payload: json.RawMessage(`{}`)}, false},
		{"empty", ``, frame{}, true},
		{"garbage", `hello`, frame{}, true},
		{"v1 no topic", `{"event":"e","payload":{},"ref":null}`, frame{}, true},
		{"v2 short", `[null,"1","t","e"]`, frame{}, true},
		{"v2 topic number", `[null,null,1,"e",{}]`, frame{}, true},
		{"ref object", `{"topic":"t","event":"e","payload":{},"ref":{}}`, frame{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeFrame([]byte(tc.in))
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if err == nil {
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("(-want +got)\n%s", diff)
				}
			}
		})
	}
}

func TestEncodeFrameRoundTrip(t *testing.T) {
	f := frame{Topic: "realtime:a", Event: "phx_join", Ref: "1", JoinRef: "1", Payload: json.RawMessage(`{"a":1}`)}
	for _, vsn := range []string{VSN1, VSN2} {
		b, err := encodeFrame(vsn, f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeFrame(b)
		if err != nil {
			t.Fatalf("%s: %v (%s)", vsn, err, b)
		}
		if diff := cmp.Diff(f, got); diff != "" {
			t.Errorf("%s: (-want +got)\n%s", vsn, diff)
		}
	}
	// Heartbeats carry a null join_ref and ref as a string.
	b, _ := encodeFrame(VSN1, frame{Topic: "phoenix", Event: "heartbeat", Ref: "7"})
	if string(b) != `{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}` {
		t.Errorf("heartbeat encoded as %s", b)
	}
}

// FuzzDecodeFrame feeds arbitrary frames through everything a server frame
// reaches in the client: framing, payload decoding and row mapping. It
// must never panic.
func FuzzDecodeFrame(f *testing.F) {
	seeds := []string{
		`{"topic":"realtime:x","event":"phx_reply","payload":{"status":"ok","response":{"postgres_changes":[{"id":1,"event":"*","schema":"waylume","table":"peers","filter":"node_id=eq.x"}]}},"ref":"1"}`,
		`{"topic":"realtime:x","event":"system","payload":{"channel":"x","extension":"postgres_changes","status":"ok","message":"Subscribed to PostgreSQL"},"ref":null}`,
		`[null,null,"realtime:x","postgres_changes",{"ids":[1],"data":{"schema":"waylume","table":"peers","type":"UPDATE","commit_timestamp":"2026-08-21T10:15:30.123Z","columns":[{"name":"id","type":"uuid"}],"record":{"id":"a","node_id":"` + nodeID + `","public_key":"k","address":"10.0.0.2","allowed_ips":"{10.1.0.0/16}","enabled":"t","download_kbps":"5"},"old_record":{"id":"a"},"errors":null}}]`,
		`{"topic":"realtime:x","event":"postgres_changes","payload":{"ids":[1],"data":{"table":"nodes","type":"INSERT","record":{"id":"` + nodeID + `","address":"10.8.0.1/16","listen_port":51820,"dns":["1.1.1.1"]},"errors":["Error 413: Payload Too Large"]}},"ref":null}`,
		`["1","1","realtime:x","phx_close",{}]`,
		`{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":12}`,
		`[`, `{"topic":`, `[1,2,3,4,5]`, `{"ref":{"a":1}}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := decodeFrame(data)
		if err != nil {
			return
		}
		if b, err := encodeFrame(VSN2, fr); err == nil {
			if _, err := decodeFrame(b); err != nil && json.Valid(fr.Payload) {
				t.Fatalf("re-encoded frame does not decode: %v: %s", err, b)
			}
		}
		var rp replyPayload
		if unmarshal(fr.Payload, &rp) == nil {
			var jr joinResponse
			_ = unmarshal(rp.Response, &jr)
		}
		var sp systemPayload
		_ = unmarshal(fr.Payload, &sp)
		var cp changePayload
		if unmarshal(fr.Payload, &cp) == nil {
			changeEvent(nodeID, &cp.Data, log)
			cp.Data.errs()
			parseTime(cp.Data.CommitTimestamp)
		}
	})
}
