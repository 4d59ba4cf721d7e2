package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/waylume/waylume-node/internal/dbfix"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/supabase/auth/authtest"
	"github.com/waylume/waylume-node/supabase/realtime/realtimetest"
)

// withAuthProject starts a 2026 project's stand-ins: Auth with short
// ES256 tokens, and Realtime verifying through Auth's JWKS, with no legacy
// secret; both reachable from the node's namespace. The node is
// configured with the project URL, the publishable key, its Auth email and
// its password file, nothing else.
func (e *env) withAuthProject(ttl time.Duration) (*authtest.Server, string) {
	t := e.t
	authSrv, err := authtest.New(authtest.Config{AccessTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(authSrv.Close)
	dbfix.Exec(t, e.db, `GRANT waylume_node, service_role TO realtime_admin`)
	dbfix.Exec(t, e.db, `ALTER DATABASE `+e.db.Name+` SET synchronous_commit = on`)
	e.admin.Close(context.Background())
	admin, err := pgx.Connect(context.Background(), e.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	e.admin = admin
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := realtimetest.New(ctx, realtimetest.Config{DatabaseURL: e.db.URLAs("realtime_admin"), JWKSURL: authSrv.JWKSURL(),
		APIKeys: []string{authSrv.PublishableKey()}, PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	e.rt = nil // the harness's own Realtime settings stay off
	rtAddr := forwardInto(t, e.nodeNS, strings.TrimPrefix(strings.TrimSuffix(rt.URL(), "/realtime/v1/websocket"), "ws://"))
	authAddr := forwardInto(t, e.nodeNS, strings.TrimPrefix(authSrv.URL(), "http://"))
	const email, password = "node@nodes.example", "node-password-0123456789abcdef"
	userID := authSrv.AddUser(email, password, map[string]any{"node_id": e.nodeID})
	pwFile := filepath.Join(t.TempDir(), "auth.password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.extraEnv = append(e.extraEnv,
		"WAYLUME_SUPABASE_URL=http://"+authAddr, "WAYLUME_REALTIME_URL=ws://"+rtAddr+"/realtime/v1/websocket",
		"WAYLUME_SUPABASE_KEY="+authSrv.PublishableKey(), "WAYLUME_AUTH_EMAIL="+email, "WAYLUME_AUTH_PASSWORD_FILE="+pwFile)
	e.authRT = rt
	return authSrv, userID
}

// A node that is an Auth user runs for several token lifetimes: every
// token is renewed and pushed to the live channel (one join in all), no
// refresh token is reused, a revoked session falls back to the password,
// and every peer inserted meanwhile reaches the device by its event (the
// resync is an hour away). Then `node revoke` ends its credentials while
// it keeps serving the peers it has. Its output holds no secret.
func TestAuthUserNode(t *testing.T) {
	e := newEnv(t)
	authSrv, userID := e.withAuthProject(4 * time.Second)
	n := e.startNode("userspace", time.Hour, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var keys []string
	addAndWait := func(what string) {
		t.Helper()
		k := newKey(t)
		e.addPeer(k.PublicKey(), "")
		keys = append(keys, k.PublicKey().String())
		testkit.Eventually(t, 30*time.Second, func() error {
			peers, err := e.nodePeers()
			if err != nil {
				return err
			}
			if _, ok := peers[k.PublicKey().String()]; !ok {
				return fmt.Errorf("%s: peer not on the device", what)
			}
			return nil
		})
	}
	addAndWait("first peer")
	start := time.Now()
	for i := 0; time.Since(start) < 17*time.Second; i++ {
		if i == 4 {
			authSrv.RevokeSessions(userID) // the next refresh is refused
		}
		addAndWait(fmt.Sprintf("peer %d", i))
		time.Sleep(time.Second) // pacing across token lifetimes, not synchronisation
	}
	st := authSrv.Stats()
	t.Logf("after %s: %+v, realtime joins %d, peers %d", time.Since(start).Round(time.Second), st, e.authRT.Joins(), len(keys))
	if st.Refreshes < 3 || st.PasswordGrants != 2 {
		t.Errorf("auth stats %+v: want refreshes across the lifetimes and one password fallback", st)
	}
	if st.ReuseDetected != 0 || st.ReuseInWindow != 0 {
		t.Errorf("refresh tokens reused: %+v", st)
	}
	if j := e.authRT.Joins(); j != 1 {
		t.Errorf("%d Realtime joins: token renewals caused rejoins", j)
	}

	// Revoke: database side and Auth user in one command.
	cmd := exec.CommandContext(ctx, binPath, "node", "revoke", "--node-id", e.nodeID)
	cmd.Env = append(os.Environ(), "WAYLUME_DATABASE_URL="+e.db.URL, "WAYLUME_SUPABASE_URL="+authSrv.URL(),
		"WAYLUME_SUPABASE_SECRET_KEY="+authSrv.SecretKey(), "WAYLUME_LOG_FORMAT=text")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "1 Auth user(s) deleted") {
		t.Fatalf("node revoke: %v\n%s", err, out)
	}
	if authSrv.UserByEmail("node@nodes.example") != "" {
		t.Error("the Auth user survived the revocation")
	}
	// The revoked node keeps its peers (it only lost the control plane);
	// give it time to do something wrong.
	time.Sleep(6 * time.Second)
	peers := e.nodePeersMust(t)
	for _, k := range keys {
		if _, ok := peers[k]; !ok {
			t.Errorf("the revoked node dropped peer %s", k)
		}
	}
	select {
	case <-n.done:
		t.Errorf("the revoked node exited: %v", n.err)
	default:
	}
	out := n.out.String()
	for _, s := range append(append([]string{"node-password-0123456789abcdef", authSrv.SecretKey()}, authSrv.RefreshTokens()...), authSrv.AccessTokens()...) {
		if strings.Contains(out, s) {
			t.Fatalf("a secret reached the node's log")
		}
	}
}
