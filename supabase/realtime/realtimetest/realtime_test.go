package realtimetest_test

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/supabase/realtime"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

const wait = 10 * time.Second

// peerRow reads a peer's decoded fields straight from the database to
// compare with what the client decoded.
func (f *fixture) peerRow(t *testing.T, id string) events.Peer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var p events.Peer
	var addr netip.Prefix
	var allowed []netip.Prefix
	var keep, down, up *int64
	var quota *int64
	var psk *string
	var exp, reset *time.Time
	err := f.admin.QueryRow(ctx, `SELECT id::text, node_id::text, public_key, preshared_key, address, allowed_ips,
		persistent_keepalive, download_kbps, upload_kbps, quota_bytes, quota_reset_at, expires_at, enabled, created_at, updated_at
		FROM waylume.peers WHERE id = $1`, id).Scan(&p.ID, &p.NodeID, &p.PublicKey, &psk, &addr, &allowed,
		&keep, &down, &up, &quota, &reset, &exp, &p.Enabled, &p.CreatedAt, &p.UpdatedAt)
	if err != nil {
		t.Fatal(err)
	}
	p.Address, p.AllowedIPs = addr, allowed
	if psk != nil {
		p.PresharedKey = *psk
	}
	if keep != nil {
		p.PersistentKeepalive = int(*keep)
	}
	if down != nil {
		p.DownloadKbps = *down
	}
	if up != nil {
		p.UploadKbps = *up
	}
	if quota != nil {
		p.QuotaBytes = *quota
	}
	if reset != nil {
		p.QuotaResetAt = *reset
	}
	if exp != nil {
		p.ExpiresAt = *exp
	}
	return p
}

var timeEq = cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })
var prefixEq = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

func checkPeer(t *testing.T, f *fixture, e events.Event) {
	t.Helper()
	if e.Peer == nil {
		t.Fatalf("event %v %s carries no peer", e.Kind, e.ID)
	}
	want := f.peerRow(t, e.ID)
	if diff := cmp.Diff(want, *e.Peer, cmpopts.EquateEmpty(), timeEq, prefixEq, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("decoded peer differs from the row (-db +event):\n%s", diff)
	}
	if e.Source != "realtime" || e.Commit.IsZero() {
		t.Errorf("source %q commit %v: want realtime and a commit time", e.Source, e.Commit)
	}
}

// TestTypedEvents: a node's inserts, updates and deletes arrive typed and
// equal to the rows; another node's rows never arrive, also not when a peer
// moves away (filters run on the new row).
func TestTypedEvents(t *testing.T) {
	for _, tc := range []struct {
		name string
		vsn  string
		text bool // server sends PostgreSQL text values like older servers
	}{{"vsn1", "", false}, {"vsn2", realtime.VSN2, false}, {"text-values", "", true}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.srv.SetStringValues(tc.text)
			c := f.startClient(t, func(cfg *realtime.Config) { cfg.VSN = tc.vsn })
			at := 0
			c.rec.next(t, &at, wait, "first resync", isResync)

			other := f.addPeer(t, f.nodeB)
			id := f.addPeer(t, f.nodeA)
			e := c.rec.next(t, &at, wait, "insert", kindID(events.PeerChanged, id))
			checkPeer(t, f, e)

			f.exec(t, `UPDATE waylume.peers SET download_kbps = 20000, upload_kbps = 5000, quota_bytes = 9007199254740993,
				allowed_ips = '{192.168.7.0/24,fd00:1::/64}', persistent_keepalive = 25,
				preshared_key = public_key, expires_at = '2031-02-03 04:05:06.789+02' WHERE id = $1`, id)
			f.exec(t, `UPDATE waylume.peers SET download_kbps = 1 WHERE id = $1`, other)
			e = c.rec.next(t, &at, wait, "update", kindID(events.PeerChanged, id))
			checkPeer(t, f, e)
			if e.Peer.QuotaBytes != 9007199254740993 || len(e.Peer.AllowedIPs) != 2 || e.Peer.DownloadKbps != 20000 {
				t.Errorf("update decoded as %+v", e.Peer)
			}

			f.exec(t, `UPDATE waylume.nodes SET endpoint = 'vpn.example.test:51821', mtu = 1380, dns = '{1.1.1.1,2606:4700::1111}' WHERE id = $1`, f.nodeA)
			f.exec(t, `UPDATE waylume.nodes SET mtu = 1400 WHERE id = $1`, f.nodeB)
			e = c.rec.next(t, &at, wait, "node update", kindID(events.NodeChanged, f.nodeA))
			if e.Node == nil || e.Node.Endpoint != "vpn.example.test:51821" || e.Node.MTU != 1380 || len(e.Node.DNS) != 2 ||
				e.Node.Address != netip.MustParsePrefix("10.8.0.1/16") || e.Node.ListenPort != 51820 {
				t.Errorf("node decoded as %+v", e.Node)
			}

			// A peer moving to node B is not sent to A (new row filtered).
			moved := f.addPeer(t, f.nodeA)
			c.rec.next(t, &at, wait, "insert of the peer to move", kindID(events.PeerChanged, moved))
			f.exec(t, `UPDATE waylume.peers SET node_id = $2, address = NULL WHERE id = $1`, moved, f.nodeB)
			f.exec(t, `DELETE FROM waylume.peers WHERE id = $1`, other)
			f.exec(t, `DELETE FROM waylume.peers WHERE id = $1`, id)
			e = c.rec.next(t, &at, wait, "delete", kindID(events.PeerDeleted, id))
			if e.Peer != nil {
				t.Errorf("delete carries a peer")
			}
			// Everything committed before the delete has been delivered
			// by now (commit order): nothing of node B's arrived.
			for _, e := range c.rec.since(0) {
				if e.ID == other || e.ID == f.nodeB || (e.ID == moved && e.Kind != events.PeerChanged) ||
					(e.Peer != nil && e.Peer.NodeID != f.nodeA) {
					t.Errorf("foreign event arrived: %+v", e)
				}
				if e.ID == moved && e.Peer != nil && e.Peer.NodeID != f.nodeA {
					t.Errorf("moved peer arrived with node B")
				}
			}
		})
	}
}

// TestServiceKey: with the service key there is no RLS, filters alone keep
// other nodes' rows away.
func TestServiceKey(t *testing.T) {
	f := newFixture(t, nil)
	c := f.startClient(t, func(cfg *realtime.Config) {
		cfg.APIKey = realtimetest.ServiceKey(secret)
		cfg.AccessToken = ""
	})
	at := 0
	c.rec.next(t, &at, wait, "resync", isResync)
	other := f.addPeer(t, f.nodeB)
	id := f.addPeer(t, f.nodeA)
	checkPeer(t, f, c.rec.next(t, &at, wait, "insert", kindID(events.PeerChanged, id)))
	for _, e := range c.rec.since(0) {
		if e.ID == other {
			t.Errorf("node B's peer arrived: %+v", e)
		}
	}
}

// TestRestartNoLeaks restarts the server 50 times mid-stream. Each time the
// client reconnects, rejoins and signals resync; a consumer that rereads on
// resync ends with exactly the database's peers, including those inserted
// while the server was down; no goroutines or sockets are left behind.
func TestRestartNoLeaks(t *testing.T) {
	f := newFixture(t, nil)
	base := runtime.NumGoroutine()
	c := f.startClient(t, nil)
	at := 0
	have := map[string]bool{}
	consume := func(e events.Event) {
		switch e.Kind {
		case events.Resync:
			have = f.peerIDs(t, f.nodeA)
		case events.PeerChanged:
			have[e.ID] = true
		case events.PeerDeleted:
			delete(have, e.ID)
		}
	}
	consume(c.rec.next(t, &at, wait, "first resync", isResync))
	for i := 0; i < 50; i++ {
		f.addPeer(t, f.nodeA) // streamed
		var lost string
		if i%2 == 0 {
			f.srv.Stop()
			lost = f.addPeer(t, f.nodeA) // committed while the server is down
			if err := f.srv.Start(); err != nil {
				t.Fatal(err)
			}
		} else {
			// A clean close 1012 ("Server requested disconnect").
			f.srv.Disconnect()
			lost = f.addPeer(t, f.nodeA)
		}
		for {
			e := c.rec.next(t, &at, wait, "event after restart", func(events.Event) bool { return true })
			consume(e)
			if e.Kind == events.Resync {
				break
			}
		}
		if !have[lost] {
			t.Fatalf("cycle %d: peer %s committed during the outage not seen after resync", i, lost)
		}
		if n := f.srv.Sockets(); n != 1 {
			t.Fatalf("cycle %d: %d server sockets open, want 1", i, n)
		}
	}
	live := f.addPeer(t, f.nodeA)
	for !have[live] {
		consume(c.rec.next(t, &at, wait, "event after the last restart", func(events.Event) bool { return true }))
	}
	if want := f.peerIDs(t, f.nodeA); !cmp.Equal(want, have) {
		t.Errorf("consumer state differs from the table: %s", cmp.Diff(want, have))
	}
	if got := f.srv.Connections(); got < 51 {
		t.Errorf("%d connections, want at least 51", got)
	}
	c.stop()
	waitFor(t, wait, "server sockets to close", func() bool { return f.srv.Sockets() == 0 })
	// Goroutines of finished sessions are gone (the server's own poller and
	// pool were started before base was taken).
	waitFor(t, wait, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= base+2 })
}

// TestHeartbeatTimeout: a server that stops answering heartbeats is
// detected within two heartbeat periods, and the client recovers.
func TestHeartbeatTimeout(t *testing.T) {
	f := newFixture(t, nil)
	const period = 500 * time.Millisecond
	c := f.startClient(t, func(cfg *realtime.Config) { cfg.HeartbeatInterval = period })
	at, st := 0, 0
	c.rec.next(t, &at, wait, "resync", isResync)
	c.rec.nextState(t, &st, wait, "live", func(s realtime.State) bool { return s.Phase == realtime.Live })
	f.srv.SetHeartbeatReplies(false)
	start := time.Now()
	s := c.rec.nextState(t, &st, wait, "heartbeat timeout", func(s realtime.State) bool {
		return s.Phase == realtime.Disconnected
	})
	detected := time.Since(start)
	var rerr *realtime.Error
	if !errors.As(s.Err, &rerr) || rerr.Op != "heartbeat" {
		t.Fatalf("session ended with %v, want a heartbeat error", s.Err)
	}
	// The unanswered heartbeat goes out within one period and is declared
	// lost one period later; the new session is live right after the short
	// backoff. Allow some scheduling slack on a busy machine.
	if detected > 2*period+250*time.Millisecond {
		t.Errorf("heartbeat loss detected after %v, want within two periods (%v)", detected, 2*period)
	}
	c.rec.next(t, &at, wait, "resync after the timeout", isResync)
	if recovered := time.Since(start) - detected; recovered > period {
		t.Errorf("live again %v after the detection, want within a period (%v)", recovered, period)
	}
	f.srv.SetHeartbeatReplies(true)
	id := f.addPeer(t, f.nodeA)
	c.rec.next(t, &at, wait, "insert after recovery", kindID(events.PeerChanged, id))
}

// TestLostEventsResync: changes the server loses (and those before a
// delayed "Subscribed") are recovered by the resync that follows the next
// subscription.
func TestLostEventsResync(t *testing.T) {
	f := newFixture(t, nil)
	c := f.startClient(t, nil)
	at, st := 0, 0
	c.rec.next(t, &at, wait, "resync", isResync)
	polled := f.srv.Polled()
	f.srv.SetLoseEvents(true)
	lost := f.addPeer(t, f.nodeA)
	f.waitPolled(t, polled, 1)
	f.srv.SetLoseEvents(false)
	for _, e := range c.rec.since(at) {
		t.Fatalf("event arrived although the server lost it: %+v", e)
	}
	// The channel crashes; the rejoin's subscription is delayed, so the
	// client must not report live (nor resync) before it comes.
	f.srv.SetSubscribeDelay(700 * time.Millisecond)
	f.srv.SendPhxError()
	s := c.rec.nextState(t, &st, wait, "disconnect after phx_error", func(s realtime.State) bool {
		return s.Phase == realtime.Disconnected
	})
	if !errors.Is(s.Err, realtime.ErrChannelCrashed) {
		t.Errorf("session ended with %v, want the phx_error", s.Err)
	}
	c.rec.nextState(t, &st, wait, "joining", func(s realtime.State) bool { return s.Phase == realtime.Joining })
	joined := time.Now()
	c.rec.next(t, &at, wait, "resync after the delayed subscription", isResync)
	if d := time.Since(joined); d < 500*time.Millisecond {
		t.Errorf("resync %v after the join, before the delayed Subscribed", d)
	}
	if !f.peerIDs(t, f.nodeA)[lost] {
		t.Fatalf("lost peer not in the table")
	}
	f.srv.SetSubscribeDelay(0)
}

// TestTokenRefresh: a refreshed token keeps the channel alive past the old
// token's expiry; an expired token is reported (on the channel, then on the
// rejoin) and a new token recovers at once, without waiting for the slow
// permanent-error retry.
func TestTokenRefresh(t *testing.T) {
	f := newFixture(t, nil)
	c := f.startClient(t, func(cfg *realtime.Config) {
		cfg.AccessToken = realtimetest.NodeToken(secret, f.nodeA, 2*time.Second)
		cfg.PermanentRetry = time.Minute
	})
	at, st := 0, 0
	c.rec.next(t, &at, wait, "resync", isResync)
	c.rt.SetAccessToken(realtimetest.NodeToken(secret, f.nodeA, time.Hour))
	time.Sleep(2500 * time.Millisecond) // let the first token expire: the assertion is about what did not happen
	id := f.addPeer(t, f.nodeA)
	c.rec.next(t, &at, wait, "insert after the first token's expiry", kindID(events.PeerChanged, id))
	for _, s := range c.rec.statesSince(st) {
		if s.Phase == realtime.Disconnected {
			t.Fatalf("channel dropped although the token was refreshed: %v", s.Err)
		}
	}

	// An expired token pushed to the channel: the server closes it.
	c.rt.SetAccessToken(realtimetest.NodeToken(secret, f.nodeA, -time.Minute))
	s := c.rec.nextState(t, &st, wait, "channel closed for the token", func(s realtime.State) bool {
		return s.Phase == realtime.Disconnected
	})
	var rerr *realtime.Error
	if !errors.As(s.Err, &rerr) || !errors.Is(s.Err, realtime.ErrChannelClosed) || !rerr.Permanent ||
		!strings.Contains(rerr.Reason, "Token has expired") {
		t.Fatalf("got %v, want a permanent token error", s.Err)
	}
	if s.Retry != time.Minute {
		t.Errorf("retry in %v, want the permanent retry", s.Retry)
	}
	// A new but still expired token: the rejoin is refused and reported.
	c.rt.SetAccessToken(realtimetest.NodeToken(secret, f.nodeA, -2*time.Minute))
	s = c.rec.nextState(t, &st, wait, "rejoin refused", func(s realtime.State) bool {
		return s.Phase == realtime.Disconnected && errors.As(s.Err, &rerr) && rerr.Op == "join"
	})
	if !rerr.Permanent || !strings.HasPrefix(rerr.Reason, "InvalidJWTToken: Token has expired") {
		t.Fatalf("rejoin error %v, want InvalidJWTToken", s.Err)
	}
	c.rt.SetAccessToken(realtimetest.NodeToken(secret, f.nodeA, time.Hour))
	c.rec.next(t, &at, wait, "resync with a valid token", isResync)

	// The server's own token-error close (expiry check) is reported too.
	f.srv.KickWithTokenError()
	s = c.rec.nextState(t, &st, wait, "kick", func(s realtime.State) bool { return s.Phase == realtime.Disconnected })
	if !errors.As(s.Err, &rerr) || rerr.Op != "channel" || !errors.Is(s.Err, realtime.ErrChannelClosed) || !rerr.Permanent {
		t.Errorf("kick reported as %v", s.Err)
	}
}

// TestBadFrames: malformed frames, unknown events, binary frames, stale
// lifecycle messages and errors payloads neither crash nor wedge the
// client.
func TestBadFrames(t *testing.T) {
	f := newFixture(t, func(c *realtimetest.Config) { c.MaxRecordBytes = 4096 })
	c := f.startClient(t, nil)
	at, st := 0, 0
	c.rec.next(t, &at, wait, "resync", isResync)
	topic := "realtime:waylume-node-" + f.nodeA
	for _, raw := range []string{
		`not json`, `{}`, `[]`, `[1,2,3]`, `null`, `{"topic":1,"event":"x","payload":{},"ref":null}`,
		`{"topic":"` + topic + `","event":"presence_state","payload":{},"ref":null}`,
		`{"topic":"` + topic + `","event":"broadcast","payload":{"x":1},"ref":null}`,
		`{"topic":"` + topic + `","event":"phx_close","payload":{},"ref":"999"}`,
		`{"topic":"` + topic + `","event":"phx_error","payload":{},"ref":"998"}`,
		`{"topic":"` + topic + `","event":"system","payload":"nope","ref":null}`,
		`{"topic":"` + topic + `","event":"postgres_changes","payload":{"ids":[1],"data":{"type":"INSERT"}},"ref":null}`,
		`{"topic":"realtime:other","event":"postgres_changes","payload":{},"ref":null}`,
		`{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"12345"}`,
	} {
		f.srv.SendRaw(raw)
	}
	f.srv.SendBinary([]byte{0x03, 0x01, 0x02})
	// An undecodable change for one of our bindings means "reread all".
	f.srv.SendRaw(`{"topic":"` + topic + `","event":"postgres_changes","payload":{"ids":"bad"},"ref":null}`)
	c.rec.next(t, &at, wait, "resync for an undecodable change", isResync)

	// errors payloads: forced, then a real 413 from an oversize record.
	f.srv.SetForceErrors([]string{"Error 401: Unauthorized"})
	id := f.addPeer(t, f.nodeA)
	e := c.rec.next(t, &at, wait, "change with errors", kindID(events.PeerChanged, id))
	if e.Peer != nil {
		t.Errorf("record with errors applied: %+v", e.Peer)
	}
	f.srv.SetForceErrors(nil)
	f.exec(t, `UPDATE waylume.peers SET metadata = jsonb_build_object('blob', repeat('x', 8000)) WHERE id = $1`, id)
	e = c.rec.next(t, &at, wait, "oversize change", kindID(events.PeerChanged, id))
	if e.Peer != nil {
		t.Errorf("oversize record applied: %+v", e.Peer)
	}
	id2 := f.addPeer(t, f.nodeA)
	checkPeer(t, f, c.rec.next(t, &at, wait, "normal change afterwards", kindID(events.PeerChanged, id2)))
	for _, s := range c.rec.statesSince(st) {
		if s.Phase == realtime.Disconnected {
			t.Errorf("session dropped: %v", s.Err)
		}
	}
}

// TestRefusedUpgrade: HTTP status and the JSON error text are reported;
// 401/403/404 count as permanent, 429/5xx as transient.
func TestRefusedUpgrade(t *testing.T) {
	f := newFixture(t, nil)
	f.srv.RefuseUpgrades(429, "Too many connected users")
	c := f.startClient(t, nil)
	st := 0
	var rerr *realtime.Error
	s := c.rec.nextState(t, &st, wait, "refused", func(s realtime.State) bool { return s.Phase == realtime.Disconnected })
	if !errors.As(s.Err, &rerr) || rerr.Status != 429 || rerr.Reason != "Too many connected users" || rerr.Permanent {
		t.Fatalf("got %#v", s.Err)
	}
	f.srv.RefuseUpgrades(0, "")
	at := 0
	c.rec.next(t, &at, wait, "resync once accepted", isResync)
	c.stop()

	// A key signed with another secret: the server's real text, permanent.
	c = f.startClient(t, func(cfg *realtime.Config) { cfg.APIKey = realtimetest.AnonKey("another-secret") })
	st = 0
	s = c.rec.nextState(t, &st, wait, "refused key", func(s realtime.State) bool { return s.Phase == realtime.Disconnected })
	if !errors.As(s.Err, &rerr) || rerr.Status != 403 || !rerr.Permanent || !strings.Contains(rerr.Reason, "JwtSignatureError") {
		t.Fatalf("got %#v", s.Err)
	}
	// The text is what reaches the logs: the key must not be in it.
	if strings.Contains(s.Err.Error(), realtimetest.AnonKey("another-secret")) {
		t.Errorf("error text carries the key")
	}
}

// TestSubscribeRefused: a table missing from the publication is a
// permanent subscription error, reported and not hammered.
func TestSubscribeRefused(t *testing.T) {
	f := newFixture(t, nil)
	f.exec(t, `ALTER PUBLICATION supabase_realtime DROP TABLE waylume.peers`)
	c := f.startClient(t, func(cfg *realtime.Config) { cfg.PermanentRetry = time.Minute })
	st := 0
	var rerr *realtime.Error
	s := c.rec.nextState(t, &st, wait, "refused", func(s realtime.State) bool { return s.Phase == realtime.Disconnected })
	if !errors.As(s.Err, &rerr) || rerr.Op != "subscribe" || !rerr.Permanent ||
		!strings.HasPrefix(rerr.Reason, "Unable to subscribe to changes with given parameters") {
		t.Fatalf("got %v", s.Err)
	}
	if s.Retry != time.Minute {
		t.Errorf("retry in %v, want a minute", s.Retry)
	}
	for _, e := range c.rec.since(0) {
		t.Errorf("event without a subscription: %+v", e)
	}
}

// TestSuperuserServer: Supabase's Realtime connects as a superuser
// (supabase_admin) and switches to the token's role for the RLS check; a
// node token must still see its own rows, and only those.
func TestSuperuserServer(t *testing.T) {
	f := newFixture(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	su, err := realtimetest.New(ctx, realtimetest.Config{DatabaseURL: f.db.URL, JWTSecret: secret, PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(su.Close)
	f.srv = su
	c := f.startClient(t, nil)
	at := 0
	c.rec.next(t, &at, wait, "resync", isResync)
	other := f.addPeer(t, f.nodeB)
	id := f.addPeer(t, f.nodeA)
	checkPeer(t, f, c.rec.next(t, &at, wait, "own peer through RLS as the node's role", kindID(events.PeerChanged, id)))
	for _, e := range c.rec.since(0) {
		if e.ID == other {
			t.Errorf("node B's peer arrived: %+v", e)
		}
	}
}

// TestJoinAndSubscribeTimeouts: an unanswered join and a subscription that
// never goes live both end the session, which then recovers.
func TestJoinAndSubscribeTimeouts(t *testing.T) {
	f := newFixture(t, nil)
	f.srv.SetJoinReplies(false)
	c := f.startClient(t, func(cfg *realtime.Config) {
		cfg.JoinTimeout = 300 * time.Millisecond
		cfg.SubscribeTimeout = 500 * time.Millisecond
	})
	at, st := 0, 0
	var rerr *realtime.Error
	s := c.rec.nextState(t, &st, wait, "join timeout", func(s realtime.State) bool { return s.Phase == realtime.Disconnected })
	if !errors.As(s.Err, &rerr) || rerr.Op != "join" || rerr.Permanent {
		t.Fatalf("got %v, want a transient join timeout", s.Err)
	}
	f.srv.SetSubscribeDelay(time.Hour)
	f.srv.SetJoinReplies(true)
	s = c.rec.nextState(t, &st, wait, "subscribe timeout", func(s realtime.State) bool {
		return s.Phase == realtime.Disconnected && errors.As(s.Err, &rerr) && rerr.Op == "subscribe"
	})
	if rerr.Permanent {
		t.Errorf("subscribe timeout is permanent: %v", s.Err)
	}
	for _, e := range c.rec.since(0) {
		t.Errorf("event before any subscription: %+v", e)
	}
	f.srv.SetSubscribeDelay(0)
	c.rec.next(t, &at, wait, "resync once the server subscribes", isResync)
}

// TestDatabaseRestart: the database goes away under the server. The
// client hears the subscription error, stays joined, and resyncs when the
// server has a new slot and says "Subscribed to PostgreSQL" again; a peer
// inserted in between is found by the resync.
func TestDatabaseRestart(t *testing.T) {
	f := newFixture(t, nil)
	c := f.startClient(t, nil)
	at, st := 0, 0
	c.rec.next(t, &at, wait, "resync", isResync)
	if err := f.db.Cluster.StopServer(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			f.db.Cluster.StartServer()
		}
	})
	s := c.rec.nextState(t, &st, wait, "subscription error", func(s realtime.State) bool {
		return s.Phase == realtime.Joining && s.Err != nil
	})
	var rerr *realtime.Error
	if !errors.As(s.Err, &rerr) || rerr.Op != "subscribe" || rerr.Permanent {
		t.Errorf("got %v, want a transient subscribe error", s.Err)
	}
	if err := f.db.Cluster.StartServer(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, f.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	f.admin = admin
	id := f.addPeer(t, f.nodeA)
	c.rec.next(t, &at, wait, "resync after the database came back", isResync)
	if !f.peerIDs(t, f.nodeA)[id] {
		t.Fatal("peer not in the table")
	}
	for _, s := range c.rec.statesSince(0) {
		if s.Phase == realtime.Disconnected {
			t.Errorf("socket dropped during the database outage: %v", s.Err)
		}
	}
	id2 := f.addPeer(t, f.nodeA)
	checkPeer(t, f, c.rec.next(t, &at, wait, "insert on the new slot", kindID(events.PeerChanged, id2)))
}
