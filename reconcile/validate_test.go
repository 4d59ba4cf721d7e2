package reconcile

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
)

func TestValidateRules(t *testing.T) {
	node := testNodeRow()
	node.Address6 = netip.MustParsePrefix("fd00:8::1/64")
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name   string
		edit   func(p *events.Peer)
		reason string // "" = active
	}{
		{"good", func(p *events.Peer) {}, ""},
		{"good with everything", func(p *events.Peer) {
			p.PresharedKey = key(99).String()
			p.Address6 = netip.MustParsePrefix("fd00:8::5/128")
			p.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")}
			p.PersistentKeepalive, p.DownloadKbps, p.UploadKbps, p.QuotaBytes = 25, 20000, 5000, 1<<30
		}, ""},
		{"key not base64", func(p *events.Peer) { p.PublicKey = "not a key!" }, "invalid: public_key not base64 of 32 bytes"},
		{"key 31 bytes", func(p *events.Peer) { p.PublicKey = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" }, "invalid: public_key not base64"},
		{"key zero", func(p *events.Peer) { p.PublicKey = Key{}.String() }, "invalid: public_key is all zeros"},
		{"bad psk", func(p *events.Peer) { p.PresharedKey = "xx" }, "invalid: preshared_key not base64"},
		{"no address", func(p *events.Peer) { p.Address = netip.Prefix{} }, "invalid: address missing"},
		{"address outside pool", func(p *events.Peer) { p.Address = netip.MustParsePrefix("10.9.0.5/32") }, "invalid: address 10.9.0.5 outside the pool"},
		{"address is node", func(p *events.Peer) { p.Address = netip.MustParsePrefix("10.8.0.1/32") }, "invalid: address 10.8.0.1 is the node's address"},
		{"address is network", func(p *events.Peer) { p.Address = netip.MustParsePrefix("10.8.0.0/32") }, "invalid: address 10.8.0.0 is the pool's network"},
		{"address is broadcast", func(p *events.Peer) { p.Address = netip.MustParsePrefix("10.8.0.255/32") }, "invalid: address 10.8.0.255 is the pool's broadcast"},
		{"address v6 in v4 field", func(p *events.Peer) { p.Address = netip.MustParsePrefix("fd00:8::9/128") }, "invalid: address fd00:8::9 is not in the pool's family"},
		{"address6 outside", func(p *events.Peer) { p.Address6 = netip.MustParsePrefix("fd00:9::9/128") }, "invalid: address6 fd00:9::9 outside"},
		{"allowed ips overlap pool", func(p *events.Peer) { p.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("10.8.0.0/16")} }, "invalid: allowed_ips 10.8.0.0/16 overlap the node's pool"},
		{"allowed ips overlap pool6", func(p *events.Peer) { p.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("fd00:8::/48")} }, "invalid: allowed_ips fd00:8::/48 overlap the node's pool"},
		{"allowed ips v4-mapped v6", func(p *events.Peer) { p.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("::ffff:192.168.7.0/120")} }, "invalid: allowed_ips ::ffff:192.168.7.0/120 is an IPv4-mapped IPv6 prefix"},
		{"allowed ips default route", func(p *events.Peer) { p.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")} }, "invalid: allowed_ips 0.0.0.0/0 would route everything"},
		{"too many allowed ips", func(p *events.Peer) {
			for i := range maxAllowedIPs + 1 {
				p.AllowedIPs = append(p.AllowedIPs, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(i), 0}), 24))
			}
		}, "invalid: 129 allowed_ips"},
		{"keepalive negative", func(p *events.Peer) { p.PersistentKeepalive = -1 }, "invalid: persistent_keepalive -1"},
		{"keepalive huge", func(p *events.Peer) { p.PersistentKeepalive = 65536 }, "invalid: persistent_keepalive 65536"},
		{"download negative", func(p *events.Peer) { p.DownloadKbps = -5 }, "invalid: download_kbps -5"},
		{"upload absurd", func(p *events.Peer) { p.UploadKbps = maxKbps + 1 }, "invalid: upload_kbps"},
		{"quota negative", func(p *events.Peer) { p.QuotaBytes = -1 }, "invalid: quota_bytes -1"},
		{"disabled", func(p *events.Peer) { p.Enabled = false }, "disabled"},
		{"expired", func(p *events.Peer) { p.ExpiresAt = now }, "expired"},
		{"not yet expired", func(p *events.Peer) { p.ExpiresAt = now.Add(time.Second) }, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := peerRow(5)
			c.edit(&p)
			d := decide(node, Key{}, map[string]events.Peer{p.ID: p}, now, func(string) int64 { return 0 })[p.ID]
			if c.reason == "" {
				if d.state != events.StateActive {
					t.Fatalf("state %s %q, want active", d.state, d.reason)
				}
				if d.cfg.AllowedIPs[0] != netip.PrefixFrom(p.Address.Addr(), 32) {
					t.Fatalf("first allowed IP %v, want the peer's /32 (shaping keys on it)", d.cfg.AllowedIPs)
				}
				return
			}
			if !strings.HasPrefix(d.reason, c.reason) {
				t.Fatalf("reason %q, want prefix %q", d.reason, c.reason)
			}
			want := events.StateRejected
			if !strings.HasPrefix(c.reason, "invalid") {
				want = events.StateBlocked
			}
			if d.state != want {
				t.Fatalf("state %s, want %s", d.state, want)
			}
		})
	}
}

func TestValidateNoSecretInReason(t *testing.T) {
	p := peerRow(1)
	p.PresharedKey = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=" // base64 but 21 bytes
	d := decide(testNodeRow(), Key{}, map[string]events.Peer{p.ID: p}, time.Now(), func(string) int64 { return 0 })[p.ID]
	if d.state != events.StateRejected || strings.Contains(d.reason, p.PresharedKey) {
		t.Fatalf("reason %q", d.reason)
	}
}

// Of two rows claiming the same address, key or allowed IPs, the older
// keeps it whatever the map order; the newer is rejected naming the owner.
func TestValidateConflictsOlderWins(t *testing.T) {
	now := time.Now()
	older, newer := peerRow(1), peerRow(2)
	cases := map[string]func(){
		"address": func() { newer.Address = older.Address },
		"key":     func() { newer.PublicKey = older.PublicKey },
		"allowed_ips": func() {
			older.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}
			newer.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("192.168.7.0/24")}
		},
		"same created_at, lower id wins": func() {
			newer.CreatedAt = older.CreatedAt
			newer.Address = older.Address
		},
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			older, newer = peerRow(1), peerRow(2)
			edit()
			for range 20 { // map iteration order varies
				d := decide(testNodeRow(), Key{}, map[string]events.Peer{older.ID: older, newer.ID: newer}, now, func(string) int64 { return 0 })
				if d[older.ID].state != events.StateActive {
					t.Fatalf("older: %s %q", d[older.ID].state, d[older.ID].reason)
				}
				if d[newer.ID].state != events.StateRejected || !strings.Contains(d[newer.ID].reason, older.ID) {
					t.Fatalf("newer: %s %q", d[newer.ID].state, d[newer.ID].reason)
				}
			}
		})
	}
	// A blocked older row still holds its address; a rejected one does not.
	older, newer = peerRow(1), peerRow(2)
	newer.Address = older.Address
	older.Enabled = false
	d := decide(testNodeRow(), Key{}, map[string]events.Peer{older.ID: older, newer.ID: newer}, now, func(string) int64 { return 0 })
	if d[newer.ID].state != events.StateRejected {
		t.Fatalf("newer took a disabled peer's address: %s", d[newer.ID].state)
	}
	older.Enabled, older.DownloadKbps = true, -1
	d = decide(testNodeRow(), Key{}, map[string]events.Peer{older.ID: older, newer.ID: newer}, now, func(string) int64 { return 0 })
	if d[newer.ID].state != events.StateActive {
		t.Fatalf("an invalid row blocked the address: %s %q", d[newer.ID].state, d[newer.ID].reason)
	}
}

// A row may not use the node's own key: WireGuard would silently ignore
// the peer while the node reported it active.
func TestRowWithNodesOwnKeyRejected(t *testing.T) {
	p := peerRow(5)
	self := key(5)
	d := decide(testNodeRow(), self, map[string]events.Peer{p.ID: p}, time.Now(), func(string) int64 { return 0 })[p.ID]
	if d.state != events.StateRejected || d.reason != "invalid: public_key is the node's own key" {
		t.Fatalf("row with the node's key: %s %q", d.state, d.reason)
	}
	d = decide(testNodeRow(), key(6), map[string]events.Peer{p.ID: p}, time.Now(), func(string) int64 { return 0 })[p.ID]
	if d.state != events.StateActive {
		t.Fatalf("row with another key: %s %q", d.state, d.reason)
	}
}

// decideInto reuses its map: decisions of rows gone are dropped, the
// others overwritten, and the result is what a fresh decide gives.
func TestDecideIntoReusesMap(t *testing.T) {
	node, now, none := testNodeRow(), time.Now(), func(string) int64 { return 0 }
	rows := map[string]events.Peer{}
	for n := 1; n <= 20; n++ {
		p := peerRow(n)
		rows[p.ID] = p
	}
	out := decide(node, Key{}, rows, now, none)
	for n := 1; n <= 10; n++ {
		delete(rows, peerRow(n).ID)
	}
	p := rows[peerRow(11).ID]
	p.Enabled = false
	rows[p.ID] = p
	decideInto(out, node, Key{}, rows, now, none)
	want := decide(node, Key{}, rows, now, none)
	if len(out) != len(want) {
		t.Fatalf("%d decisions after reuse, want %d", len(out), len(want))
	}
	for id, w := range want {
		got, ok := out[id]
		if !ok || got.state != w.state || got.reason != w.reason || got.key != w.key || got.owner != w.owner || !got.cfg.Equal(w.cfg) {
			t.Fatalf("row %s: reused map holds %+v (present %v), fresh decide %+v", id, got, ok, w)
		}
	}
	if out[p.ID].state != events.StateBlocked {
		t.Fatalf("disabled row decided %q", out[p.ID].state)
	}
}
