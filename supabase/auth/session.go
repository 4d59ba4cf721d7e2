package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waylume/waylume-node/internal/retry"
)

// ReuseWindow is how long Auth accepts a refresh token again after it was
// used (to survive a lost answer); sent later, it counts as reuse and
// revokes the whole session.
const ReuseWindow = 10 * time.Second

// SessionConfig configures a SessionSource.
type SessionConfig struct {
	Client   *Client // with the publishable (or anon) key
	Email    string
	Password string
	// ReuseWindow of the server; default ReuseWindow. A refresh that fails
	// on the network is retried only within it, then the source signs in
	// with the password instead of risking a reuse.
	ReuseWindow time.Duration
	// Retry paces retries after network errors and refusals; default 1 s
	// to 1 min with jitter.
	Retry      retry.Policy
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// SessionSource is the node's Auth session: it signs in with the password
// grant, refreshes before the access token expires (each refresh token
// once), signs in again when a refresh is refused, and hands every new
// access token to OnChange. Auth being unreachable only delays renewal:
// the node keeps serving its peers meanwhile.
type SessionSource struct {
	cfg      SessionConfig
	log      *slog.Logger
	failures *prometheus.CounterVec
	ready    chan struct{}

	mu       sync.Mutex
	token    string
	exp      time.Time
	onChange func(string)
}

// NewSessionSource checks cfg and registers the source's metrics; Run
// does the work.
func NewSessionSource(cfg SessionConfig) (*SessionSource, error) {
	if cfg.Client == nil || cfg.Email == "" || cfg.Password == "" {
		return nil, errors.New("auth: a client, an email and a password are required")
	}
	if cfg.ReuseWindow <= 0 {
		cfg.ReuseWindow = ReuseWindow
	}
	if cfg.Retry.Initial <= 0 {
		cfg.Retry = retry.Policy{Initial: time.Second, Max: time.Minute}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &SessionSource{cfg: cfg, log: cfg.Log, ready: make(chan struct{})}
	s.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "waylume_auth_failures_total",
		Help: "Failed Auth calls by operation (sign_in, refresh); the node keeps its peers meanwhile.",
	}, []string{"op"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.failures, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "waylume_access_token_expiry_seconds",
			Help: "Seconds until the Realtime access token expires (negative: expired); the Auth session renews it before.",
		}, s.secondsLeft)} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("auth metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Token returns the current access token, waiting for the first sign-in.
func (s *SessionSource) Token(ctx context.Context) (string, error) {
	select {
	case <-s.ready:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token, nil
}

// OnChange registers f to receive each access token issued from now on.
func (s *SessionSource) OnChange(f func(string)) {
	s.mu.Lock()
	s.onChange = f
	s.mu.Unlock()
}

func (s *SessionSource) secondsLeft() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return secondsLeft(s.exp, !s.exp.IsZero())
}

// Run keeps the session until ctx ends; it returns ctx's error.
func (s *SessionSource) Run(ctx context.Context) error {
	var sess Session
	for ctx.Err() == nil {
		if sess.RefreshToken == "" {
			sess = s.signIn(ctx)
			continue
		}
		if !retry.Sleep(ctx, time.Until(renewAt(sess))) {
			break
		}
		sess = s.refresh(ctx, sess)
	}
	return ctx.Err()
}

// renewAt leaves a fifth of the token's life, at most 5 minutes and at
// least a second, for renewing it.
func renewAt(sess Session) time.Time {
	exp := sess.Expiry()
	margin := min(exp.Sub(sess.Received)/5, 5*time.Minute)
	return exp.Add(-max(margin, time.Second))
}

// signIn runs the password grant until it succeeds or ctx ends; a zero
// Session means ctx ended.
func (s *SessionSource) signIn(ctx context.Context) Session {
	b := s.cfg.Retry.New()
	for {
		sess, err := s.cfg.Client.SignInWithPassword(ctx, s.cfg.Email, s.cfg.Password)
		if err == nil {
			s.log.Info("signed in to Auth", "user_id", sess.User.ID, "expires_in", time.Until(sess.Expiry()).Round(time.Second))
			s.publish(sess)
			return sess
		}
		if ctx.Err() != nil {
			return Session{}
		}
		s.failures.WithLabelValues("sign_in").Inc()
		d := b.Next()
		if errors.Is(err, ErrRefused) {
			s.log.Error("Auth refused the node's sign-in; check WAYLUME_AUTH_EMAIL and the password file, or whether the node was revoked", "err", err, "retry_in", d)
		} else {
			s.log.Warn("cannot sign in to Auth; retrying", "err", err, "retry_in", d)
		}
		if !retry.Sleep(ctx, d) {
			return Session{}
		}
	}
}

// refresh renews sess. Network failures are retried only while the
// server would still accept the same refresh token (the reuse window),
// since it may have used it already; past that, or on a refusal, it
// returns a zero Session so Run signs in with the password.
func (s *SessionSource) refresh(ctx context.Context, sess Session) Session {
	b := s.cfg.Retry.New()
	first := time.Now()
	for {
		next, err := s.cfg.Client.Refresh(ctx, sess.RefreshToken)
		if err == nil {
			s.log.Debug("access token refreshed", "expires_in", time.Until(next.Expiry()).Round(time.Second))
			s.publish(next)
			return next
		}
		if ctx.Err() != nil {
			return sess
		}
		s.failures.WithLabelValues("refresh").Inc()
		if errors.Is(err, ErrRefused) {
			s.log.Warn("Auth refused the refresh; signing in again", "err", err)
			return Session{}
		}
		d := b.Next()
		if time.Since(first)+d >= s.cfg.ReuseWindow {
			s.log.Warn("cannot refresh within the reuse window; signing in again", "err", err)
			return Session{}
		}
		s.log.Warn("cannot refresh the access token; retrying", "err", err, "retry_in", d)
		if !retry.Sleep(ctx, d) {
			return sess
		}
	}
}

func (s *SessionSource) publish(sess Session) {
	s.mu.Lock()
	s.token, s.exp = sess.AccessToken, sess.Expiry()
	f := s.onChange
	s.mu.Unlock()
	select {
	case <-s.ready:
		if f != nil {
			f(sess.AccessToken)
		}
	default:
		close(s.ready)
	}
}
