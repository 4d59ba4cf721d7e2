package auth_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/internal/jwt"
	"github.com/waylume/waylume-node/internal/retry"
	"github.com/waylume/waylume-node/internal/testkit"
	"github.com/waylume/waylume-node/supabase/auth"
	"github.com/waylume/waylume-node/supabase/auth/authtest"
)

const password = "correct-horse-battery-staple-0123"

// fixture is a stand-in Auth with one node user and a running source
// whose tokens are recorded with the time left on each.
type fixture struct {
	srv    *authtest.Server
	src    *auth.SessionSource
	userID string
	logs   *testkit.Buffer

	mu     sync.Mutex
	tokens []string
	late   int // tokens delivered with less than nothing left
}

func newFixture(t *testing.T, srvCfg authtest.Config, reuseWindow time.Duration) *fixture {
	t.Helper()
	srv, err := authtest.New(srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	f := &fixture{srv: srv, logs: &testkit.Buffer{}}
	f.userID = srv.AddUser("node@nodes.example", password, map[string]any{"node_id": "8f1f0f5e-2b7c-4e1a-9d5e-3c2b1a0f9e8d"})
	client, err := auth.NewClient(srv.URL(), srv.PublishableKey(), nil)
	if err != nil {
		t.Fatal(err)
	}
	f.src, err = auth.NewSessionSource(auth.SessionConfig{
		Client: client, Email: "node@nodes.example", Password: password, ReuseWindow: reuseWindow,
		Retry: retry.Policy{Initial: 200 * time.Millisecond, Max: time.Second},
		Log:   slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.src.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; f.checkNoSecrets(t) })
	first, err := f.src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.record(first)
	f.src.OnChange(f.record)
	return f
}

func (f *fixture) record(tok string) {
	exp, _ := jwt.Expiry(tok)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = append(f.tokens, tok)
	if time.Until(exp) <= 0 {
		f.late++
	}
}

func (f *fixture) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.tokens)
}

// waitTokens waits until n tokens were delivered in all.
func (f *fixture) waitTokens(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, func() error {
		if c := f.count(); c < n {
			return fmt.Errorf("%d tokens so far, want %d", c, n)
		}
		return nil
	})
}

// checkNoSecrets: no password, access or refresh token in any log line.
func (f *fixture) checkNoSecrets(t *testing.T) {
	logs := f.logs.String()
	secrets := append([]string{password}, f.srv.RefreshTokens()...)
	f.mu.Lock()
	secrets = append(secrets, f.tokens...)
	f.mu.Unlock()
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("a secret reached the log: %q", logs)
			return
		}
	}
}

// Short tokens are renewed before they expire, each refresh token used
// once, with one password sign-in in all.
func TestSessionRenewsBeforeExpiry(t *testing.T) {
	f := newFixture(t, authtest.Config{AccessTTL: 3 * time.Second}, 0)
	f.waitTokens(t, 5, 15*time.Second)
	st := f.srv.Stats()
	if st.PasswordGrants != 1 || st.ReuseInWindow != 0 || st.ReuseDetected != 0 || st.Refreshes < 4 {
		t.Errorf("stats %+v: want one sign-in, refreshes, no reuse", st)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.late != 0 {
		t.Errorf("%d tokens arrived after the previous one expired", f.late)
	}
	seen := map[string]bool{}
	for _, tok := range f.tokens {
		if seen[tok] {
			t.Error("the same access token delivered twice")
		}
		seen[tok] = true
	}
}

// A refused refresh (the session was revoked) falls back to a password
// sign-in, and tokens keep coming.
func TestSessionRefusedRefreshSignsIn(t *testing.T) {
	f := newFixture(t, authtest.Config{AccessTTL: 3 * time.Second}, 0)
	f.srv.RevokeSessions(f.userID)
	f.waitTokens(t, 3, 10*time.Second)
	if st := f.srv.Stats(); st.PasswordGrants != 2 || st.ReuseDetected != 0 {
		t.Errorf("stats %+v: want a second password sign-in and no reuse", st)
	}
}

// A lost refresh answer is retried with the same token within the reuse
// window, which Auth honours: no reuse detected, no extra sign-in.
func TestSessionRetriesLostRefreshWithinReuseWindow(t *testing.T) {
	f := newFixture(t, authtest.Config{AccessTTL: 3 * time.Second}, 0)
	f.srv.LoseRefreshAnswers(1)
	f.waitTokens(t, 3, 10*time.Second)
	if st := f.srv.Stats(); st.ReuseInWindow != 1 || st.ReuseDetected != 0 || st.PasswordGrants != 1 {
		t.Errorf("stats %+v: want one retry inside the window, nothing else", st)
	}
}

// When the window is too short for a retry, the source signs in with the
// password instead of sending a token Auth would treat as stolen.
func TestSessionSignsInRatherThanReuse(t *testing.T) {
	f := newFixture(t, authtest.Config{AccessTTL: 3 * time.Second, ReuseWindow: 100 * time.Millisecond}, 100*time.Millisecond)
	f.srv.LoseRefreshAnswers(1)
	f.waitTokens(t, 3, 10*time.Second)
	if st := f.srv.Stats(); st.ReuseDetected != 0 || st.ReuseInWindow != 0 || st.PasswordGrants != 2 {
		t.Errorf("stats %+v: want a password sign-in instead of a reuse", st)
	}
}

// Network errors at sign-in are retried with backoff until Auth answers.
func TestSessionBacksOffOnNetworkErrors(t *testing.T) {
	srv, err := authtest.New(authtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.AddUser("n@nodes.example", password, nil)
	srv.DropRequests(3)
	client, _ := auth.NewClient(srv.URL(), srv.PublishableKey(), nil)
	src, err := auth.NewSessionSource(auth.SessionConfig{Client: client, Email: "n@nodes.example", Password: password,
		Retry: retry.Policy{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go src.Run(ctx)
	if _, err := src.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.Dropped != 3 || st.PasswordGrants != 1 {
		t.Errorf("stats %+v", st)
	}
}

// Classification: refusals are ErrRefused, lost answers ErrUnavailable;
// neither error quotes the password.
func TestClientErrors(t *testing.T) {
	srv, err := authtest.New(authtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	client, _ := auth.NewClient(srv.URL(), srv.PublishableKey(), nil)
	_, err = client.SignInWithPassword(context.Background(), "nobody@nodes.example", password)
	var api *auth.APIError
	if !errors.Is(err, auth.ErrRefused) || !errors.As(err, &api) || api.Code != "invalid_credentials" || strings.Contains(err.Error(), password) {
		t.Errorf("wrong credentials: %v", err)
	}
	srv.DropRequests(1)
	if _, err := client.Refresh(context.Background(), "some-refresh-token"); !errors.Is(err, auth.ErrUnavailable) || strings.Contains(err.Error(), "some-refresh-token") {
		t.Errorf("dropped request: %v", err)
	}
	bad, _ := auth.NewClient(srv.URL(), "sb_publishable_wrong", nil)
	if _, err := bad.SignInWithPassword(context.Background(), "n@nodes.example", password); !errors.Is(err, auth.ErrRefused) {
		t.Errorf("bad API key: %v", err)
	}
}
