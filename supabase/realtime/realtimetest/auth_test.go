package realtimetest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/supabase/auth"
	"github.com/waylume/waylume-node/supabase/auth/authtest"
	"github.com/waylume/waylume-node/supabase/realtime"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

// A 2026 project: no legacy secret, a publishable key as apikey and the
// node's Auth user token (ES256, kid, role authenticated with
// app_metadata.node_id) verified through Auth's JWKS. The node sees its
// own changes; an end user's token of the same project is accepted by
// Realtime but RLS shows it nothing; a token without kid is refused with
// the real server's reason.
func TestAuthUserTokenThroughJWKS(t *testing.T) {
	authSrv, err := authtest.New(authtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer authSrv.Close()
	f := newFixture(t, func(cfg *realtimetest.Config) {
		cfg.JWTSecret, cfg.JWKSURL, cfg.APIKeys = "", authSrv.JWKSURL(), []string{authSrv.PublishableKey()}
	})
	authSrv.AddUser("a@nodes.example", "pw-a-0123456789", map[string]any{"node_id": f.nodeA})
	authSrv.AddUser("user@app.example", "pw-u-0123456789", nil)
	client, _ := auth.NewClient(authSrv.URL(), authSrv.PublishableKey(), nil)
	signIn := func(email, pw string) string {
		s, err := client.SignInWithPassword(context.Background(), email, pw)
		if err != nil {
			t.Fatal(err)
		}
		return s.AccessToken
	}
	nodeTok, userTok := signIn("a@nodes.example", "pw-a-0123456789"), signIn("user@app.example", "pw-u-0123456789")
	const wait = 10 * time.Second

	node := f.startClient(t, func(c *realtime.Config) { c.APIKey, c.AccessToken = authSrv.PublishableKey(), nodeTok })
	user := f.startClient(t, func(c *realtime.Config) { c.APIKey, c.AccessToken = authSrv.PublishableKey(), userTok })
	var at, uat int
	node.rec.next(t, &at, wait, "node's resync", isResync)
	user.rec.next(t, &uat, wait, "end user's resync", isResync)
	a := f.addPeer(t, f.nodeA)
	node.rec.next(t, &at, wait, "node a's insert", kindID(events.PeerChanged, a))
	// Both see node b's insert never; the end user sees a's never either:
	// wait for a marker the node does see, then check the user's events.
	b := f.addPeer(t, f.nodeB)
	marker := f.addPeer(t, f.nodeA)
	node.rec.next(t, &at, wait, "marker", kindID(events.PeerChanged, marker))
	for _, e := range node.rec.since(0) {
		if e.ID == b {
			t.Error("node a got node b's insert")
		}
	}
	for _, e := range user.rec.since(0) {
		if e.Kind == events.PeerChanged {
			t.Errorf("an end user's token got a peer event: %+v", e)
		}
	}

	// The same key without kid: the join is refused.
	k := authSrv.Key()
	k.ID = ""
	noKid, _ := k.Sign(map[string]any{"role": "authenticated", "exp": time.Now().Add(time.Hour).Unix(), "app_metadata": map[string]any{"node_id": f.nodeA}})
	bad := f.startClient(t, func(c *realtime.Config) { c.APIKey, c.AccessToken = authSrv.PublishableKey(), noKid })
	var st int
	s := bad.rec.nextState(t, &st, wait, "join refused", func(s realtime.State) bool { return s.Err != nil })
	var rerr *realtime.Error
	if !errors.As(s.Err, &rerr) || rerr.Op != "join" ||
		rerr.Reason != "JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS configuration" {
		t.Errorf("token without kid: %v", s.Err)
	}
}
