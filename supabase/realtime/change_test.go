package realtime

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/waylume/waylume-node/events"
)

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
			var cp changePayload
			if err := unmarshal(json.RawMessage(payload), &cp); err != nil {
				t.Fatal(err)
			}
			ev, ok := changeEvent(nodeID, &cp.Data, slog.New(slog.DiscardHandler))
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
	ch := func(s string) *change {
		var c change
		if err := unmarshal(json.RawMessage(s), &c); err != nil {
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
			ev, ok := changeEvent(nodeID, ch(tc.in), log)
			if ok != tc.ok || ev.Kind != tc.kind || (ev.Peer != nil || ev.Node != nil) != tc.row {
				t.Errorf("got %+v ok=%v; want kind %v ok=%v row=%v", ev, ok, tc.kind, tc.ok, tc.row)
			}
		})
	}
}
