package supabase

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/waylume/waylume-node/events"
)

func TestDecodeFrame(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     rtFrame
		err      bool
	}{
		{"v1 reply", `{"topic":"realtime:x","event":"phx_reply","payload":{"status":"ok"},"ref":"1"}`,
			rtFrame{Topic: "realtime:x", Event: "phx_reply", Ref: "1", Payload: json.RawMessage(`{"status":"ok"}`)}, false},
		{"v1 null ref", `{"topic":"t","event":"system","payload":{},"ref":null}`,
			rtFrame{Topic: "t", Event: "system", Payload: json.RawMessage(`{}`)}, false},
		{"v1 numeric ref", `{"topic":"t","event":"e","payload":{},"ref":12,"join_ref":"3"}`,
			rtFrame{Topic: "t", Event: "e", Ref: "12", JoinRef: "3", Payload: json.RawMessage(`{}`)}, false},
		{"v2 push", `[null,null,"realtime:x","postgres_changes",{"ids":[1]}]`,
			rtFrame{Topic: "realtime:x", Event: "postgres_changes", Payload: json.RawMessage(`{"ids":[1]}`)}, false},
		{"v2 close", `["4","4","realtime:x","phx_close",{}]`,
			rtFrame{JoinRef: "4", Ref: "4", Topic: "realtime:x", Event: "phx_close", Payload: json.RawMessage(`{}`)}, false},
		{"empty", ``, rtFrame{}, true},
		{"garbage", `hello`, rtFrame{}, true},
		{"v1 no topic", `{"event":"e","payload":{},"ref":null}`, rtFrame{}, true},
		{"v2 short", `[null,"1","t","e"]`, rtFrame{}, true},
		{"v2 topic number", `[null,null,1,"e",{}]`, rtFrame{}, true},
		{"ref object", `{"topic":"t","event":"e","payload":{},"ref":{}}`, rtFrame{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := rtDecodeFrame([]byte(tc.in))
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
	f := rtFrame{Topic: "realtime:a", Event: "phx_join", Ref: "1", JoinRef: "1", Payload: json.RawMessage(`{"a":1}`)}
	for _, vsn := range []string{RealtimeVSN1, RealtimeVSN2} {
		b, err := rtEncodeFrame(vsn, f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := rtDecodeFrame(b)
		if err != nil {
			t.Fatalf("%s: %v (%s)", vsn, err, b)
		}
		if diff := cmp.Diff(f, got); diff != "" {
			t.Errorf("%s: (-want +got)\n%s", vsn, diff)
		}
	}
	// Heartbeats carry a null join_ref and ref as a string.
	b, _ := rtEncodeFrame(RealtimeVSN1, rtFrame{Topic: "phoenix", Event: "heartbeat", Ref: "7"})
	if string(b) != `{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}` {
		t.Errorf("heartbeat encoded as %s", b)
	}
}

const nodeID = "0b7e4b9e-8d7c-4a8e-9a51-3c6b0c1d2e3f"

// Native values (current servers) and PostgreSQL text (older servers)
// decode to the same peer.
func TestDecodePeerNativeAndText(t *testing.T) {
	cols := `[{"name":"id","type":"uuid"},{"name":"node_id","type":"uuid"},{"name":"public_key","type":"text"},
		{"name":"preshared_key","type":"text"},{"name":"address","type":"inet"},{"name":"address6","type":"inet"},
		{"name":"allowed_ips","type":"_cidr"},{"name":"persistent_keepalive","type":"int4"},{"name":"download_kbps","type":"int4"},
		{"name":"upload_kbps","type":"int4"},{"name":"quota_bytes","type":"int8"},{"name":"quota_reset_at","type":"timestamptz"},
		{"name":"expires_at","type":"timestamptz"},{"name":"enabled","type":"bool"},{"name":"created_at","type":"timestamptz"},
		{"name":"updated_at","type":"timestamptz"}]`
	native := `{"id":"11111111-2222-3333-4444-555555555555","node_id":"` + nodeID + `","public_key":"k","preshared_key":null,
		"address":"10.8.0.2","address6":"fd00::2","allowed_ips":["192.168.7.0/24","fd00:1::/64"],"persistent_keepalive":25,
		"download_kbps":20000,"upload_kbps":null,"quota_bytes":9007199254740993,"quota_reset_at":"2026-08-21T10:15:30.123+00:00",
		"expires_at":null,"enabled":true,"created_at":"2026-08-21T10:15:30.123456+02:00","updated_at":"2026-08-21T10:15:30Z"}`
	text := `{"id":"11111111-2222-3333-4444-555555555555","node_id":"` + nodeID + `","public_key":"k","preshared_key":null,
		"address":"10.8.0.2/32","address6":"fd00::2/128","allowed_ips":"{192.168.7.0/24,fd00:1::/64}","persistent_keepalive":"25",
		"download_kbps":"20000","upload_kbps":null,"quota_bytes":"9007199254740993","quota_reset_at":"2026-08-21 10:15:30.123+00",
		"expires_at":null,"enabled":"t","created_at":"2026-08-21 10:15:30.123456+02","updated_at":"2026-08-21 10:15:30+00"}`
	want := events.Peer{
		ID: "11111111-2222-3333-4444-555555555555", NodeID: nodeID, PublicKey: "k",
		Address: netip.MustParsePrefix("10.8.0.2/32"), Address6: netip.MustParsePrefix("fd00::2/128"),
		AllowedIPs:          []netip.Prefix{netip.MustParsePrefix("192.168.7.0/24"), netip.MustParsePrefix("fd00:1::/64")},
		PersistentKeepalive: 25, DownloadKbps: 20000, QuotaBytes: 9007199254740993,
		QuotaResetAt: time.Date(2026, 8, 21, 10, 15, 30, 123e6, time.UTC),
		Enabled:      true,
		CreatedAt:    time.Date(2026, 8, 21, 8, 15, 30, 123456e3, time.UTC),
		UpdatedAt:    time.Date(2026, 8, 21, 10, 15, 30, 0, time.UTC),
	}
	for name, rec := range map[string]string{"native": native, "text": text} {
		t.Run(name, func(t *testing.T) {
			payload := `{"ids":[5],"data":{"schema":"waylume","table":"peers","type":"INSERT","commit_timestamp":"2026-08-21T10:15:30.123Z",
				"columns":` + cols + `,"record":` + rec + `,"errors":null}}`
			var cp rtChangePayload
			if err := rtUnmarshal(json.RawMessage(payload), &cp); err != nil {
				t.Fatal(err)
			}
			ev, ok := rtChangeEvent(nodeID, &cp.Data, slog.New(slog.DiscardHandler))
			if !ok || ev.Kind != events.PeerChanged || ev.Peer == nil {
				t.Fatalf("got %+v ok=%v", ev, ok)
			}
			if diff := cmp.Diff(want, *ev.Peer, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) }),
				cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

// Incomplete or odd records turn into "refetch" or "resync", never a
// partial row.
func TestChangeEventEdges(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ch := func(s string) *rtChange {
		var c rtChange
		if err := rtUnmarshal(json.RawMessage(s), &c); err != nil {
			t.Fatal(err)
		}
		return &c
	}
	for _, tc := range []struct {
		name string
		in   string
		kind events.Kind
		ok   bool
		row  bool
	}{
		{"errors 413", `{"table":"peers","type":"UPDATE","record":{"id":"p1","node_id":"` + nodeID + `"},"errors":["Error 413: Payload Too Large"]}`, events.PeerChanged, true, false},
		{"errors string", `{"table":"peers","type":"INSERT","record":{"id":"p1"},"errors":"Error 401: Unauthorized"}`, events.PeerChanged, true, false},
		{"empty errors decodes", `{"table":"peers","type":"INSERT","columns":[],"record":{"id":"p1","node_id":"` + nodeID + `","public_key":"k","address":"10.0.0.2","allowed_ips":[],"enabled":true},"errors":[]}`, events.PeerChanged, true, true},
		{"missing column", `{"table":"peers","type":"INSERT","record":{"id":"p1","node_id":"` + nodeID + `"},"errors":null}`, events.PeerChanged, true, false},
		{"bad value", `{"table":"peers","type":"INSERT","record":{"id":"p1","node_id":"` + nodeID + `","public_key":"k","address":"nope","allowed_ips":[],"enabled":true}}`, events.PeerChanged, true, false},
		{"other node", `{"table":"peers","type":"UPDATE","record":{"id":"p1","node_id":"x","public_key":"k","address":"10.0.0.2","allowed_ips":[],"enabled":true}}`, events.PeerDeleted, true, false},
		{"delete pk only", `{"table":"peers","type":"DELETE","old_record":{"id":"p1"}}`, events.PeerDeleted, true, false},
		{"no id", `{"table":"peers","type":"DELETE","old_record":{}}`, 0, false, false},
		{"node delete", `{"table":"nodes","type":"DELETE","old_record":{"id":"` + nodeID + `"}}`, events.NodeChanged, true, false},
		{"node other", `{"table":"nodes","type":"UPDATE","record":{"id":"zzz"}}`, 0, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, ok := rtChangeEvent(nodeID, ch(tc.in), log)
			if ok != tc.ok || ev.Kind != tc.kind || (ev.Peer != nil || ev.Node != nil) != tc.row {
				t.Errorf("got %+v ok=%v; want kind %v ok=%v row=%v", ev, ok, tc.kind, tc.ok, tc.row)
			}
		})
	}
}

func TestNewRealtimeValidates(t *testing.T) {
	sink := events.SinkFunc(func(events.Event) {})
	ok := RealtimeConfig{URL: "wss://x.supabase.co/realtime/v1/websocket", APIKey: "k", NodeID: nodeID}
	for name, mod := range map[string]func(*RealtimeConfig){
		"no url":    func(c *RealtimeConfig) { c.URL = "" },
		"bad url":   func(c *RealtimeConfig) { c.URL = "ftp://x" },
		"no key":    func(c *RealtimeConfig) { c.APIKey = "" },
		"no node":   func(c *RealtimeConfig) { c.NodeID = "" },
		"bad node":  func(c *RealtimeConfig) { c.NodeID = "a,b" },
		"bad vsn":   func(c *RealtimeConfig) { c.VSN = "3.0.0" },
		"filter in": func(c *RealtimeConfig) { c.NodeID = "a.b" },
	} {
		c := ok
		mod(&c)
		if _, err := NewRealtime(c, sink); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	r, err := NewRealtime(ok, sink)
	if err != nil {
		t.Fatal(err)
	}
	if r.cfg.VSN != RealtimeVSN1 || r.cfg.HeartbeatInterval != 25*time.Second || r.cfg.JoinTimeout != 10*time.Second {
		t.Errorf("defaults: %+v", r.cfg)
	}
	if u := r.dialURL(); u != "wss://x.supabase.co/realtime/v1/websocket?apikey=k&vsn=1.0.0" {
		t.Errorf("dial URL %s", u)
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
		fr, err := rtDecodeFrame(data)
		if err != nil {
			return
		}
		if b, err := rtEncodeFrame(RealtimeVSN2, fr); err == nil {
			if _, err := rtDecodeFrame(b); err != nil && json.Valid(fr.Payload) {
				t.Fatalf("re-encoded frame does not decode: %v: %s", err, b)
			}
		}
		var rp rtReplyPayload
		if rtUnmarshal(fr.Payload, &rp) == nil {
			var jr rtJoinResponse
			_ = rtUnmarshal(rp.Response, &jr)
		}
		var sp rtSystemPayload
		_ = rtUnmarshal(fr.Payload, &sp)
		var cp rtChangePayload
		if rtUnmarshal(fr.Payload, &cp) == nil {
			rtChangeEvent(nodeID, &cp.Data, log)
			cp.Data.rtErrors()
			rtParseTime(cp.Data.CommitTimestamp)
		}
	})
}

// A failed dial names the URL without the apikey.
func TestDialErrorRedactsKey(t *testing.T) {
	r, err := NewRealtime(RealtimeConfig{URL: "ws://127.0.0.1:1/realtime/v1/websocket", APIKey: "secret-key-value", NodeID: nodeID,
		JoinTimeout: time.Second}, events.SinkFunc(func(events.Event) {}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.session(t.Context(), 1)
	if err == nil || strings.Contains(err.Error(), "secret-key-value") {
		t.Fatalf("dial error %v: want an error without the key", err)
	}
}
