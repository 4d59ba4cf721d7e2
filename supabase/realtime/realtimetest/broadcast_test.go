package realtimetest_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/supabase/realtime"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

// broadcastMode is the client's default mode, set explicitly over the
// fixture's postgres_changes.
func broadcastMode(vsn string) func(*realtime.Config) {
	return func(c *realtime.Config) { c.Mode, c.VSN = realtime.ModeBroadcast, vsn }
}

// Broadcast from Database in both framings: A hears its own peers' and
// row's changes, a peer moved away, and nothing of B's.
func TestBroadcastEvents(t *testing.T) {
	for _, vsn := range []string{realtime.VSN1, realtime.VSN2} {
		t.Run(vsn, func(t *testing.T) {
			f := newFixture(t, nil)
			c := f.startClient(t, broadcastMode(vsn))
			from := 0
			c.rec.next(t, &from, 10*time.Second, "resync after the join", isResync)
			id := f.addPeer(t, f.nodeA)
			c.rec.next(t, &from, 5*time.Second, "A's insert", kindID(events.PeerChanged, id))
			bPeer := f.addPeer(t, f.nodeB)
			f.exec(t, `UPDATE waylume.peers SET download_kbps = 100 WHERE id = $1`, id)
			c.rec.next(t, &from, 5*time.Second, "A's update", kindID(events.PeerChanged, id))
			f.exec(t, `UPDATE waylume.nodes SET mtu = 1400 WHERE id = $1`, f.nodeA)
			c.rec.next(t, &from, 5*time.Second, "A's node row", kindID(events.NodeChanged, f.nodeA))
			f.exec(t, `UPDATE waylume.peers SET node_id = $1 WHERE id = $2`, f.nodeB, id)
			c.rec.next(t, &from, 5*time.Second, "the move away", kindID(events.PeerChanged, id))
			f.exec(t, `UPDATE waylume.peers SET download_kbps = 7 WHERE id = $1`, bPeer)
			f.exec(t, `UPDATE waylume.nodes SET mtu = 1400 WHERE id = $1`, f.nodeB)
			last := f.addPeer(t, f.nodeA)
			c.rec.next(t, &from, 5*time.Second, "a last insert", kindID(events.PeerChanged, last))
			for _, e := range c.rec.since(0) {
				if e.ID == bPeer || e.ID == f.nodeB {
					t.Errorf("A received B's event %v %s", e.Kind, e.ID)
				}
				if e.Source != "realtime" {
					t.Errorf("event source %q", e.Source)
				}
			}
		})
	}
}

// Broadcast from Database is pushed by a replication stream, as on the real
// server, not polled: with the postgres_changes poll a minute apart every
// message still arrives at once, and a lost stream comes back by itself.
// The bounds are generous (a loaded machine); the benchmarks measure.
func TestBroadcastStreamed(t *testing.T) {
	f := newFixture(t, func(c *realtimetest.Config) { c.PollInterval = time.Minute })
	c := f.startClient(t, broadcastMode(realtime.VSN2))
	from := 0
	c.rec.next(t, &from, 10*time.Second, "resync after the join", isResync)
	var slowest time.Duration
	for range 20 {
		start := time.Now()
		id := f.addPeer(t, f.nodeA)
		c.rec.next(t, &from, 5*time.Second, "an insert", kindID(events.PeerChanged, id))
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("slowest of 20 broadcasts: %v", slowest)
	streaming := func() (pid int, err error) {
		err = f.admin.QueryRow(context.Background(), `SELECT coalesce(max(r.pid), 0) FROM pg_stat_replication r
			JOIN pg_stat_activity a USING (pid) WHERE a.datname = current_database()
			AND r.application_name = 'realtimetest_messages' AND r.state = 'streaming'`).Scan(&pid)
		return pid, err
	}
	old, err := streaming()
	if err != nil || old == 0 {
		t.Fatalf("no message stream (%v)", err)
	}
	f.exec(t, `SELECT pg_terminate_backend($1)`, old)
	testkit.Eventually(t, 10*time.Second, func() error {
		pid, err := streaming()
		if err == nil && (pid == 0 || pid == old) {
			err = fmt.Errorf("stream pid %d, the lost one %d", pid, old)
		}
		return err
	})
	id := f.addPeer(t, f.nodeA)
	c.rec.next(t, &from, 5*time.Second, "an insert on the new stream", kindID(events.PeerChanged, id))
}

// A private join the token may not read is refused with Unauthorized,
// reported as permanent with a hint naming the policy.
func TestBroadcastUnauthorized(t *testing.T) {
	f := newFixture(t, nil)
	for name, token := range map[string]string{
		"node B's token": realtimetest.NodeToken(secret, f.nodeB, time.Hour),
		"an end user's":  realtimetest.Token(secret, map[string]any{"role": "authenticated", "sub": "u1", "exp": time.Now().Add(time.Hour).Unix()}),
		"the anon key":   realtimetest.AnonKey(secret),
		"a forged claim": realtimetest.Token(secret, map[string]any{"role": "authenticated", "user_metadata": map[string]any{"node_id": f.nodeA}, "exp": time.Now().Add(time.Hour).Unix()}),
	} {
		t.Run(name, func(t *testing.T) {
			c := f.startClient(t, func(c *realtime.Config) {
				broadcastMode(realtime.VSN1)(c)
				c.AccessToken = token
			})
			from := 0
			st := c.rec.nextState(t, &from, 10*time.Second, "a refused join", func(s realtime.State) bool { return s.Refused != nil })
			if st.Refused.Code != "Unauthorized" || st.Refused.Hint() == "" || !st.Refused.Permanent {
				t.Fatalf("refused with %+v (hint %q)", st.Refused, st.Refused.Hint())
			}
			if n := len(c.rec.since(0)); n != 0 {
				t.Fatalf("%d events from a refused channel", n)
			}
		})
	}
	// The node's own Auth user (role authenticated, app_metadata.node_id)
	// joins.
	c := f.startClient(t, func(c *realtime.Config) {
		broadcastMode(realtime.VSN2)(c)
		c.AccessToken = realtimetest.Token(secret, map[string]any{"role": "authenticated", "sub": "node-a-user",
			"app_metadata": map[string]any{"node_id": f.nodeA}, "exp": time.Now().Add(time.Hour).Unix()})
	})
	from := 0
	c.rec.next(t, &from, 10*time.Second, "the Auth user's join", isResync)
	id := f.addPeer(t, f.nodeA)
	c.rec.next(t, &from, 5*time.Second, "A's insert as its Auth user", kindID(events.PeerChanged, id))
}

// canaryWriter writes node's canary as the node's own login would.
func (f *fixture) canaryWriter(node string) func(ctx context.Context, nonce string) error {
	return func(ctx context.Context, nonce string) error {
		_, err := f.admin.Exec(ctx, `INSERT INTO waylume.node_canary (node_id, nonce) VALUES ($1, $2)
			ON CONFLICT (node_id) DO UPDATE SET nonce = EXCLUDED.nonce, sent_at = now()`, node, nonce)
		return err
	}
}

// A channel that stays joined and answers heartbeats but delivers nothing
// is found by its canary, rejoined and resynced; in both modes.
func TestDeafChannelFoundByCanary(t *testing.T) {
	for _, mode := range []string{realtime.ModeBroadcast, realtime.ModePostgresChanges} {
		t.Run(mode, func(t *testing.T) {
			f := newFixture(t, nil)
			c := f.startClient(t, func(c *realtime.Config) {
				c.Mode = mode
				c.Canary = f.canaryWriter(f.nodeA)
				c.CanaryInterval, c.CanaryTimeout = 300*time.Millisecond, 500*time.Millisecond
			})
			from, states := 0, 0
			c.rec.next(t, &from, 10*time.Second, "the first resync", isResync)
			// Canaries come back: the session stays up.
			time.Sleep(2 * time.Second)
			for _, s := range c.rec.statesSince(0) {
				if s.Sessions > 1 {
					t.Fatalf("a second session while the channel delivers: %v", s.Err)
				}
			}
			f.srv.SetDeaf(true)
			id := f.addPeer(t, f.nodeA) // lost: the channel is deaf
			st := c.rec.nextState(t, &states, 5*time.Second, "the deaf verdict", func(s realtime.State) bool {
				return s.Phase == realtime.Disconnected && errors.Is(s.Err, realtime.ErrDeaf)
			})
			t.Logf("deaf channel ended: %v", st.Err)
			mark := c.rec.mark()
			c.rec.next(t, &mark, 10*time.Second, "the resync after the rejoin", isResync)
			// The rejoined channel hears again.
			id2 := f.addPeer(t, f.nodeA)
			c.rec.next(t, &mark, 5*time.Second, "a change after the rejoin", kindID(events.PeerChanged, id2))
			for _, e := range c.rec.since(0) {
				if e.ID == id {
					t.Fatalf("the lost change arrived: the server was not deaf")
				}
			}
		})
	}
}

// Changes over the rate are dropped without a word; the canary that is
// dropped with them ends the session.
func TestRateLimitDropsSilently(t *testing.T) {
	f := newFixture(t, nil)
	f.srv.SetRateLimit(2)
	c := f.startClient(t, broadcastMode(realtime.VSN1))
	from := 0
	c.rec.next(t, &from, 10*time.Second, "resync", isResync)
	before := f.srv.Dropped()
	for range 10 {
		f.addPeer(t, f.nodeA)
	}
	testkit.Eventually(t, 5*time.Second, func() error {
		if f.srv.Dropped()-before < 5 {
			return fmt.Errorf("%d dropped", f.srv.Dropped()-before)
		}
		return nil
	})
}

// After the server drops every socket, a fleet's rejoins are spread: no
// more than 10 joins in any second, all back within the spread.
func TestFleetRejoinSpread(t *testing.T) {
	if testing.Short() {
		t.Skip("40 s")
	}
	f := newFixture(t, nil)
	const fleet = 50
	clients := make([]*client, fleet)
	for i := range clients {
		clients[i] = f.startClient(t, func(c *realtime.Config) {
			c.Mode = realtime.ModeBroadcast
			c.MinBackoff, c.MaxBackoff, c.RejoinSpread = time.Second, 10*time.Second, 0 // the defaults
		})
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		if j := f.srv.Joins(); j < fleet {
			return fmt.Errorf("%d joined", j)
		}
		return nil
	})
	dropped := time.Now()
	before := len(f.srv.JoinTimes())
	f.srv.Disconnect()
	testkit.Eventually(t, 45*time.Second, func() error {
		if n := len(f.srv.JoinTimes()) - before; n < fleet {
			return fmt.Errorf("%d of %d rejoined", n, fleet)
		}
		return nil
	})
	joins := f.srv.JoinTimes()[before:]
	slices.SortFunc(joins, func(a, b time.Time) int { return a.Compare(b) })
	worst, j := 0, 0
	for i := range joins {
		for joins[i].Sub(joins[j]) >= time.Second {
			j++
		}
		worst = max(worst, i-j+1)
	}
	t.Logf("%d rejoins from %v to %v after the drop; at most %d in one second",
		len(joins), joins[0].Sub(dropped).Round(time.Millisecond), joins[len(joins)-1].Sub(dropped).Round(time.Millisecond), worst)
	if worst > 10 {
		t.Fatalf("%d joins within one second, want at most 10", worst)
	}
}

// A permanent join error is retried at most once a minute, whatever the
// server's error delay: at most 3 joins in 90 s with the defaults.
func TestPermanentJoinErrorRetriedSlowly(t *testing.T) {
	if testing.Short() {
		t.Skip("90 s")
	}
	f := newFixture(t, func(c *realtimetest.Config) { c.ErrorReplyDelay = 5 * time.Second })
	f.srv.SetJoinError("PrivateOnly: This project only allows private channels")
	before := len(f.srv.JoinTimes())
	c := f.startClient(t, func(c *realtime.Config) {
		c.MinBackoff, c.MaxBackoff, c.RejoinSpread = 0, 0, 0 // the defaults
	})
	from := 0
	st := c.rec.nextState(t, &from, 15*time.Second, "the refusal", func(s realtime.State) bool { return s.Refused != nil })
	if st.Refused.Code != "PrivateOnly" {
		t.Fatalf("refused with %+v", st.Refused)
	}
	time.Sleep(90*time.Second - 5*time.Second)
	if n := len(f.srv.JoinTimes()) - before; n > 3 {
		t.Fatalf("%d joins in 90 s, want at most 3", n)
	} else {
		t.Logf("%d joins in 90 s", n)
	}
}

// The server's JwtSignerError (no key to verify the token with), as a join
// error and as the atom text of a channel shutdown, is permanent: the
// client reports it, with a hint, and does not rejoin before
// PermanentRetry. A transient error would rejoin within milliseconds here.
func TestJwtSignerErrorPermanent(t *testing.T) {
	f := newFixture(t, nil)
	retry := func(c *realtime.Config) {
		broadcastMode(realtime.VSN1)(c)
		c.PermanentRetry = time.Minute
	}
	t.Run("join", func(t *testing.T) {
		f.srv.SetJoinError(`JwtSignerError: Failed to generate JWT signer for key ID (kid) "k1", check your JWT secret or JWKS configuration`)
		defer f.srv.SetJoinError("")
		before := len(f.srv.JoinTimes())
		c := f.startClient(t, retry)
		from := 0
		st := c.rec.nextState(t, &from, 10*time.Second, "the refusal", func(s realtime.State) bool { return s.Refused != nil })
		if st.Refused.Code != "JwtSignerError" || !st.Refused.Permanent || st.Refused.Hint() == "" {
			t.Fatalf("refused with %+v (hint %q)", st.Refused, st.Refused.Hint())
		}
		time.Sleep(2 * time.Second)
		if n := len(f.srv.JoinTimes()) - before; n != 1 {
			t.Fatalf("%d joins, want 1 before PermanentRetry", n)
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		c := f.startClient(t, retry)
		from := 0
		c.rec.next(t, &from, 10*time.Second, "resync after the join", isResync)
		before := len(f.srv.JoinTimes())
		states := c.rec.markStates()
		f.srv.CloseChannels(":error_generating_signer")
		st := c.rec.nextState(t, &states, 10*time.Second, "the refusal", func(s realtime.State) bool { return s.Refused != nil })
		if !errors.Is(st.Err, realtime.ErrChannelClosed) || !st.Refused.Permanent {
			t.Fatalf("closed with %v, refused %+v", st.Err, st.Refused)
		}
		time.Sleep(2 * time.Second)
		if n := len(f.srv.JoinTimes()) - before; n != 0 {
			t.Fatalf("%d rejoins, want none before PermanentRetry", n)
		}
	})
}
