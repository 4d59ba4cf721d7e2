package supabase

// Realtime is the node's Supabase Realtime postgres_changes source.
//
// One goroutine (Run) owns everything: it dials, joins one channel with two
// bindings (the node's peers and its own nodes row), and runs a session loop
// that selects over decoded frames from a reader goroutine, the heartbeat
// ticker, the join timer and token updates. A session ends on any error; Run
// then waits a jittered, capped backoff (or the slow permanent-error delay)
// and starts a new one. Every session that reaches "Subscribed to PostgreSQL"
// emits events.Resync, because Realtime replays nothing.
//
// Locking: mu guards only the token and the current session's token channel,
// which SetAccessToken uses from other goroutines.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/waylume/waylume-node/events"
)

// Defaults follow realtime-js.
const (
	DefaultHeartbeatInterval = 25 * time.Second
	DefaultJoinTimeout       = 10 * time.Second
	DefaultMinBackoff        = 1 * time.Second
	DefaultMaxBackoff        = 10 * time.Second
	DefaultPermanentRetry    = 60 * time.Second
	DefaultSubscribeTimeout  = 60 * time.Second
	rtReadLimit              = 32 << 20 // the server caps records near 1 MB; leave room
	rtWriteTimeout           = 10 * time.Second
)

// RealtimeConfig configures the Realtime source.
type RealtimeConfig struct {
	// URL of the websocket endpoint, e.g.
	// wss://<ref>.supabase.co/realtime/v1/websocket; apikey and vsn are
	// added as query parameters.
	URL string
	// APIKey is the project's anon or service key (the apikey parameter).
	APIKey string
	// AccessToken is the JWT sent with the join; empty means APIKey.
	AccessToken string
	NodeID      string
	// VSN is the protocol version to request: "1.0.0" (default) or "2.0.0".
	VSN               string
	HeartbeatInterval time.Duration // default 25 s
	JoinTimeout       time.Duration // default 10 s
	// SubscribeTimeout bounds the wait from the join to "Subscribed to
	// PostgreSQL" (the server retries failed subscriptions itself every
	// 5-10 s); past it the session starts over. Default 60 s.
	SubscribeTimeout time.Duration
	// Backoff between sessions after transient errors: jittered, doubling
	// from MinBackoff up to MaxBackoff (defaults 1 s and 10 s).
	MinBackoff, MaxBackoff time.Duration
	// PermanentRetry is the delay after an error that retrying soon cannot
	// fix (rejected token, refused upgrade with 401/403/404, bad
	// subscription parameters); default 60 s. SetAccessToken cuts it short.
	PermanentRetry time.Duration
	Logger         *slog.Logger
	// OnState, when set, is called from Run's goroutine on every state
	// change; it must not block.
	OnState func(RealtimeState)
}

// RealtimePhase is where the client is in its connection cycle.
type RealtimePhase uint8

const (
	RealtimeDisconnected RealtimePhase = iota // waiting to (re)connect; Err says why
	RealtimeConnecting                        // dialling the websocket
	RealtimeJoining                           // socket up, join sent, not yet subscribed
	RealtimeLive                              // "Subscribed to PostgreSQL" received: changes flow
)

func (p RealtimePhase) String() string {
	switch p {
	case RealtimeDisconnected:
		return "disconnected"
	case RealtimeConnecting:
		return "connecting"
	case RealtimeJoining:
		return "joining"
	case RealtimeLive:
		return "live"
	}
	return "unknown"
}

// RealtimeState is reported through RealtimeConfig.OnState.
type RealtimeState struct {
	Phase RealtimePhase
	// Err is why the last session ended (Phase Disconnected), or a
	// transient subscription error while Joining; nil otherwise.
	Err error
	// Retry is how long the client waits before the next attempt
	// (Disconnected only).
	Retry time.Duration
	// Sessions counts sessions started so far, including the current one;
	// Sessions-1 is the reconnect count.
	Sessions int
}

// RealtimeError is a protocol-level failure: a refused upgrade, a join
// error reply, a system error or a server-side channel close.
type RealtimeError struct {
	Op string // "upgrade", "join", "subscribe", "token", "channel", "heartbeat"
	// Status is the HTTP status of a refused upgrade, else 0.
	Status int
	// Reason is the server's text, e.g. "InvalidJWTToken: Token has expired
	// 73 seconds ago" (tokens never appear in it).
	Reason string
	// Permanent errors are not fixed by retrying soon; the client retries
	// them only every PermanentRetry (or when a new token is set).
	Permanent bool
}

func (e *RealtimeError) Error() string {
	s := "realtime " + e.Op
	if e.Status != 0 {
		s += fmt.Sprintf(": HTTP %d", e.Status)
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Realtime is a postgres_changes subscription for one node.
type Realtime struct {
	cfg   RealtimeConfig
	sink  events.Sink
	log   *slog.Logger
	topic string
	binds []rtBinding
	// usedGen is the generation of the last token sent to the server (join
	// or push); only Run's goroutine touches it.
	usedGen uint64

	mu struct {
		sync.Mutex
		token    string
		tokenGen uint64        // bumped by SetAccessToken
		push     chan struct{} // current session's wake-up for token pushes
		wake     chan struct{} // cuts a permanent-error wait short
	}
}

// rtBinding is one postgres_changes binding we ask for.
type rtBinding struct {
	Event  string `json:"event"`
	Schema string `json:"schema"`
	Table  string `json:"table"`
	Filter string `json:"filter"`
}

// NewRealtime validates cfg and returns a client; Run starts it.
func NewRealtime(cfg RealtimeConfig, sink events.Sink) (*Realtime, error) {
	if cfg.URL == "" {
		return nil, errors.New("realtime: URL is required")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("realtime: URL: %w", err)
	}
	switch u.Scheme {
	case "ws", "wss", "http", "https":
	default:
		return nil, fmt.Errorf("realtime: URL scheme %q: want ws, wss, http or https", u.Scheme)
	}
	if cfg.APIKey == "" {
		return nil, errors.New("realtime: APIKey is required")
	}
	if cfg.NodeID == "" {
		return nil, errors.New("realtime: NodeID is required")
	}
	// The id goes into a filter; keep it to what a uuid can hold so it
	// cannot widen the filter ("x,y" would be an in-list on some servers).
	for _, c := range cfg.NodeID {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return nil, fmt.Errorf("realtime: NodeID %q: only letters, digits and '-' allowed", cfg.NodeID)
		}
	}
	if sink == nil {
		return nil, errors.New("realtime: sink is required")
	}
	switch cfg.VSN {
	case "":
		cfg.VSN = RealtimeVSN1
	case RealtimeVSN1, RealtimeVSN2:
	default:
		return nil, fmt.Errorf("realtime: VSN %q: want %s or %s", cfg.VSN, RealtimeVSN1, RealtimeVSN2)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&cfg.JoinTimeout, DefaultJoinTimeout)
	def(&cfg.MinBackoff, DefaultMinBackoff)
	def(&cfg.MaxBackoff, DefaultMaxBackoff)
	def(&cfg.PermanentRetry, DefaultPermanentRetry)
	def(&cfg.SubscribeTimeout, DefaultSubscribeTimeout)
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Realtime{
		cfg:   cfg,
		sink:  sink,
		log:   log.With("component", "realtime"),
		topic: "realtime:waylume-node-" + cfg.NodeID,
		binds: []rtBinding{
			{Event: "*", Schema: "waylume", Table: "peers", Filter: "node_id=eq." + cfg.NodeID},
			{Event: "*", Schema: "waylume", Table: "nodes", Filter: "id=eq." + cfg.NodeID},
		},
	}
	r.mu.token = cfg.AccessToken
	if r.mu.token == "" {
		r.mu.token = cfg.APIKey
	}
	r.mu.wake = make(chan struct{}, 1)
	return r, nil
}

// SetAccessToken replaces the JWT: it is pushed to the joined channel at
// once and used for every later join. Safe from any goroutine.
func (r *Realtime) SetAccessToken(token string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if token == r.mu.token {
		return
	}
	r.mu.token = token
	r.mu.tokenGen++
	for _, ch := range []chan struct{}{r.mu.push, r.mu.wake} {
		if ch == nil {
			continue
		}
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (r *Realtime) token() (string, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.token, r.mu.tokenGen
}

func (r *Realtime) state(s RealtimeState) {
	if r.cfg.OnState != nil {
		r.cfg.OnState(s)
	}
}

// Run keeps the subscription up until ctx ends, then returns ctx's error.
// It never gives up on its own: errors are logged, reported through
// OnState and retried.
func (r *Realtime) Run(ctx context.Context) error {
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(r.cfg.MinBackoff),
		backoff.WithMaxInterval(r.cfg.MaxBackoff),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0.3),
		backoff.WithMaxElapsedTime(0),
	)
	sessions := 0
	for {
		if err := ctx.Err(); err != nil {
			r.state(RealtimeState{Phase: RealtimeDisconnected, Err: err, Sessions: sessions})
			return err
		}
		sessions++
		live, err := r.session(ctx, sessions)
		if ctx.Err() != nil {
			r.state(RealtimeState{Phase: RealtimeDisconnected, Err: ctx.Err(), Sessions: sessions})
			return ctx.Err()
		}
		if live {
			// A session that got changes flowing earns a fresh backoff.
			bo.Reset()
		}
		var rerr *RealtimeError
		permanent := errors.As(err, &rerr) && rerr.Permanent
		wait := bo.NextBackOff()
		if permanent {
			wait = r.cfg.PermanentRetry
			r.log.Error("realtime subscription refused; retrying slowly: fix the cause (token, key, publication)",
				"err", err, "retry_in", wait)
		} else {
			r.log.Warn("realtime session ended; reconnecting", "err", err, "retry_in", wait)
		}
		r.state(RealtimeState{Phase: RealtimeDisconnected, Err: err, Retry: wait, Sessions: sessions})
		if !r.sleep(ctx, wait, permanent, r.usedGen) {
			r.state(RealtimeState{Phase: RealtimeDisconnected, Err: ctx.Err(), Sessions: sessions})
			return ctx.Err()
		}
	}
}

// sleep waits d; a permanent error's wait ends early when a token newer
// than gen (the last one the server saw) arrives. It returns false when ctx ended.
func (r *Realtime) sleep(ctx context.Context, d time.Duration, permanent bool, gen uint64) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	r.mu.Lock()
	wake := r.mu.wake
	r.mu.Unlock()
	for {
		var wakeC chan struct{}
		if permanent {
			wakeC = wake
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-wakeC:
			if _, g := r.token(); g != gen {
				return true
			}
		}
	}
}

// dialURL adds apikey and vsn to the configured URL.
func (r *Realtime) dialURL() string {
	u, _ := url.Parse(r.cfg.URL) // validated in NewRealtime
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	}
	q := u.Query()
	q.Set("apikey", r.cfg.APIKey)
	q.Set("vsn", r.cfg.VSN)
	u.RawQuery = q.Encode()
	return u.String()
}

// upgradeError turns a refused websocket upgrade into a RealtimeError with
// the server's JSON error text.
func rtUpgradeError(resp *http.Response, err error) error {
	if resp == nil || resp.StatusCode == http.StatusSwitchingProtocols {
		return fmt.Errorf("realtime dial: %w", rtRedact(err))
	}
	reason := http.StatusText(resp.StatusCode)
	if resp.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		var body struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		switch {
		case json.Unmarshal(b, &body) == nil && body.Error != "":
			reason = body.Error
		case body.Message != "":
			reason = body.Message
		case len(strings.TrimSpace(string(b))) > 0:
			reason = strings.TrimSpace(string(b))
		}
	}
	s := resp.StatusCode
	return &RealtimeError{Op: "upgrade", Status: s, Reason: reason,
		Permanent: s == http.StatusUnauthorized || s == http.StatusForbidden || s == http.StatusNotFound}
}

// rtRedact strips the query string (the apikey) from dial errors, which
// quote the URL.
func rtRedact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery = ""
			return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
		}
	}
	msg := err.Error()
	if i := strings.Index(msg, "apikey="); i >= 0 {
		return errors.New(msg[:i] + "apikey=REDACTED")
	}
	return err
}

// rtPermanentCodes are join-reply reason codes that a retry with the same
// credentials cannot fix.
var rtPermanentCodes = map[string]bool{
	"InvalidJWTToken":           true,
	"JwtSignatureError":         true,
	"MalformedJWT":              true,
	"Unauthorized":              true,
	"TenantNotFound":            true,
	"TopicNameRequired":         true,
	"RealtimeDisabledForTenant": true,
}

func rtJoinError(reason string) *RealtimeError {
	code, _, _ := strings.Cut(reason, ":")
	return &RealtimeError{Op: "join", Reason: reason, Permanent: rtPermanentCodes[strings.TrimSpace(code)]}
}

// rtPermanentSubscribe says whether a postgres_changes system error is one
// the server never retries (bad parameters, table not in the publication).
func rtPermanentSubscribe(msg string) bool {
	return strings.HasPrefix(msg, "Unable to subscribe to changes with given parameters")
}
