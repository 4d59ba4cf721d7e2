// Package authtest is a Supabase Auth (GoTrue) server for tests: the
// password and refresh grants, ES256 access tokens with a kid, single-use
// refresh tokens with GoTrue's reuse window and reuse detection, the admin
// users API and the JWKS at /auth/v1/.well-known/jwks.json. Its answers
// are checked against the official @supabase/auth-js client (js/ and
// conformance_test.go).
//
// Fault injection (dropped connections, lost answers, revoked sessions)
// lets the node's tests drive its renewal paths; counters say how often
// each grant ran and whether a refresh token was ever reused.
package authtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/waylume/waylume-node/internal/jwt"
)

// Config configures a Server. Zero values are fine.
type Config struct {
	// PublishableKeys and SecretKeys are the API keys accepted as apikey;
	// admin calls need a secret key (as apikey and bearer). Defaults: one
	// generated key each (Server.PublishableKey, Server.SecretKey).
	PublishableKeys []string
	SecretKeys      []string
	// Key signs access tokens; default a fresh P-256 key with a random kid.
	Key *jwt.Key
	// AccessTTL is the access token lifetime; default 3600 s (Auth's).
	AccessTTL time.Duration
	// ReuseWindow is how long a used refresh token is still honoured;
	// default 10 s (Auth's).
	ReuseWindow time.Duration
	// Addr to listen on; default 127.0.0.1:0.
	Addr string
}

// Server is a running stand-in.
type Server struct {
	cfg  Config
	key  jwt.Key
	ln   net.Listener
	http *http.Server

	mu struct {
		sync.Mutex
		users     map[string]*user // by id
		refresh   map[string]*rtok // by token
		sessions  map[string]*sess // by id
		stats     Stats
		issued    []string // access tokens signed
		dropNext  int      // requests answered by closing the connection unanswered
		loseNext  int      // refreshes processed but answered by closing the connection
		grantHook func(kind string)
	}
}

// Stats counts what the server did.
type Stats struct {
	PasswordGrants int // successful password sign-ins
	Refreshes      int // successful refreshes (rotations and reuse-window answers)
	ReuseInWindow  int // a used refresh token sent again within the window (answered)
	ReuseDetected  int // a used refresh token sent after the window: the session was revoked
	Refused        int // grants answered 4xx
	Dropped        int // requests dropped by fault injection
	JWKSFetches    int // GETs of the JWKS
}

type user struct {
	ID, Email, Password string
	AppMeta, UserMeta   map[string]any
	Confirmed           time.Time
	Created, LastSignIn time.Time
	BannedUntil         time.Time
}

type sess struct {
	id      string
	userID  string
	current string // the live refresh token
	revoked bool
}

type rtok struct {
	token   string
	session string
	usedAt  time.Time // zero while live
	child   string    // the token issued when this one was used
}

// New listens and serves.
func New(cfg Config) (*Server, error) {
	if cfg.AccessTTL <= 0 {
		cfg.AccessTTL = time.Hour
	}
	if cfg.ReuseWindow <= 0 {
		cfg.ReuseWindow = 10 * time.Second
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if len(cfg.PublishableKeys) == 0 {
		cfg.PublishableKeys = []string{"sb_publishable_" + randomString(16)}
	}
	if len(cfg.SecretKeys) == 0 {
		cfg.SecretKeys = []string{"sb_secret_" + randomString(16)}
	}
	s := &Server{cfg: cfg}
	if cfg.Key != nil {
		s.key = *cfg.Key
	} else {
		k, err := NewES256Key("")
		if err != nil {
			return nil, err
		}
		s.key = k
	}
	s.mu.users, s.mu.refresh, s.mu.sessions = map[string]*user{}, map[string]*rtok{}, map[string]*sess{}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("authtest: listen: %w", err)
	}
	s.ln = ln
	s.http = &http.Server{Handler: s.routes(), ReadHeaderTimeout: 5 * time.Second}
	go s.http.Serve(ln)
	return s, nil
}

// NewES256Key makes a P-256 signing key with kid (random when empty), as
// a project's asymmetric signing key.
func NewES256Key(kid string) (jwt.Key, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return jwt.Key{}, err
	}
	d, err := priv.Bytes()
	if err != nil {
		return jwt.Key{}, err
	}
	pub, _ := priv.PublicKey.Bytes()
	if kid == "" {
		kid = randomString(8)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	return jwt.ParseKey([]byte(fmt.Sprintf(`{"kty":"EC","crv":"P-256","kid":%q,"d":%q,"x":%q,"y":%q}`,
		kid, b64(d), b64(pub[1:33]), b64(pub[33:]))))
}

// URL is the project URL (the Auth API is at URL()+"/auth/v1").
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

// JWKSURL is where the public keys are served.
func (s *Server) JWKSURL() string { return s.URL() + "/auth/v1/.well-known/jwks.json" }

// PublishableKey and SecretKey are the first configured keys.
func (s *Server) PublishableKey() string { return s.cfg.PublishableKeys[0] }
func (s *Server) SecretKey() string      { return s.cfg.SecretKeys[0] }

// Key is the signing key (tests verify tokens with its public half).
func (s *Server) Key() jwt.Key { return s.key }

// Close stops the server.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.http.Shutdown(ctx)
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.stats
}

// DropRequests makes the next n requests fail on the network: the
// connection is closed before any answer.
func (s *Server) DropRequests(n int) {
	s.mu.Lock()
	s.mu.dropNext = n
	s.mu.Unlock()
}

// LoseRefreshAnswers makes the next n refreshes take effect (the token is
// used and rotated) but closes the connection instead of answering, as a
// lost answer does.
func (s *Server) LoseRefreshAnswers(n int) {
	s.mu.Lock()
	s.mu.loseNext = n
	s.mu.Unlock()
}

// RevokeSessions ends every session of the user: its refresh tokens are
// refused from now on (access tokens stay valid until exp, as in Auth).
func (s *Server) RevokeSessions(userID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, se := range s.mu.sessions {
		if se.userID == userID {
			se.revoked = true
		}
	}
}

// RefreshTokens and AccessTokens list every token issued so far (tests
// check that none reaches a log line).
func (s *Server) RefreshTokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.mu.refresh))
	for t := range s.mu.refresh {
		out = append(out, t)
	}
	return out
}

func (s *Server) AccessTokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.mu.issued...)
}

// AddUser creates a confirmed user with appMeta, as the admin API would,
// and returns its id.
func (s *Server) AddUser(email, password string, appMeta map[string]any) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	u := &user{ID: newUUID(), Email: strings.ToLower(email), Password: password, AppMeta: appMeta, Created: now, Confirmed: now}
	s.mu.users[u.ID] = u
	return u.ID
}

// UserByEmail returns a user's id, or "".
func (s *Server) UserByEmail(email string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range s.mu.users {
		if strings.EqualFold(u.Email, email) {
			return u.ID
		}
	}
	return ""
}

var errDrop = errors.New("dropped")

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}
