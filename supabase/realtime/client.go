package realtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/waylume/waylume-node/events"
	"github.com/waylume/waylume-node/internal/retry"
)

// Defaults follow realtime-js.
const (
	defaultHeartbeatInterval = 25 * time.Second
	defaultJoinTimeout       = 10 * time.Second
	defaultMinBackoff        = 1 * time.Second
	defaultMaxBackoff        = 10 * time.Second
	defaultPermanentRetry    = 60 * time.Second
	defaultSubscribeTimeout  = 60 * time.Second
	defaultCanaryInterval    = 60 * time.Second
	defaultCanaryTimeout     = 20 * time.Second
	defaultRejoinSpread      = 30 * time.Second
	defaultRateLimitBackoff  = 5 * time.Minute
	readLimit                = 32 << 20 // the server caps records near 1 MB; leave room
	writeTimeout             = 10 * time.Second
)

// Modes: what the channel subscribes to.
const (
	// ModeBroadcast joins the node's private topic "waylume:node:<id>",
	// fed by the database's triggers (Broadcast from Database).
	ModeBroadcast = "broadcast"
	// ModePostgresChanges subscribes to the node's rows of waylume.peers
	// and waylume.nodes through the server's change capture.
	ModePostgresChanges = "postgres_changes"
)

// Config configures a Client.
type Config struct {
	// URL of the websocket endpoint, e.g.
	// wss://<ref>.supabase.co/realtime/v1/websocket; apikey and vsn are
	// added as query parameters.
	URL string
	// APIKey is the project's anon or service key (the apikey parameter).
	APIKey string
	// AccessToken is the JWT sent with the join; empty means APIKey.
	AccessToken string
	NodeID      string
	// Mode is ModeBroadcast (default) or ModePostgresChanges.
	Mode string
	// Canary, when set, writes a canary with nonce for the node through the
	// database (waylume.node_canary); the client expects it back on its
	// channel every CanaryInterval and rejoins when it is not back within
	// CanaryTimeout (defaults 60 s and 20 s). Nil: the server's silence is
	// trusted.
	Canary                        func(ctx context.Context, nonce string) error
	CanaryInterval, CanaryTimeout time.Duration
	// VSN is the protocol version to request: VSN1 (default) or VSN2.
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
	// RejoinSpread: a session that was live and ended on the server's side
	// (a deploy drops every socket) is followed by a delay drawn uniformly
	// from MinBackoff to RejoinSpread (default 30 s), so a fleet does not
	// rejoin in the same second.
	RejoinSpread time.Duration
	// RateLimitBackoff caps the jittered backoff after the project's join,
	// connection or channel limits (from RejoinSpread up; default 5 min).
	RateLimitBackoff time.Duration
	Logger           *slog.Logger
	// OnState, when set, is called from Run's goroutine on every state
	// change; it must not block.
	OnState func(State)
}

// Phase is where the client is in its connection cycle.
type Phase uint8

const (
	Disconnected Phase = iota // waiting to (re)connect; Err says why
	Connecting                // dialling the websocket
	Joining                   // socket up, join sent, not yet subscribed
	Live                      // "Subscribed to PostgreSQL" received: changes flow
)

func (p Phase) String() string {
	switch p {
	case Disconnected:
		return "disconnected"
	case Connecting:
		return "connecting"
	case Joining:
		return "joining"
	case Live:
		return "live"
	}
	return "unknown"
}

// State is reported through Config.OnState.
type State struct {
	Phase Phase
	// Err is why the last session ended (Phase Disconnected), or a
	// transient subscription error while Joining; nil otherwise.
	Err error
	// Retry is how long the client waits before the next attempt
	// (Disconnected only).
	Retry time.Duration
	// Sessions counts sessions started so far, including the current one;
	// Sessions-1 is the reconnect count.
	Sessions int
	// Refused is set, with Phase Disconnected, while the last session ended
	// on an error that retrying soon cannot fix.
	Refused *Error
}

// Client is a postgres_changes subscription for one node.
//
// Locking: mu guards only the token and the current session's token
// channel, which SetAccessToken uses from other goroutines; everything else
// belongs to Run's goroutine.
type Client struct {
	cfg     Config
	sink    events.Sink
	recheck *recheck // row-less change hints go through it (recheck.go)
	log     *slog.Logger
	topic   string
	binds   []binding
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

// binding is one postgres_changes binding we ask for.
type binding struct {
	Event  string `json:"event"`
	Schema string `json:"schema"`
	Table  string `json:"table"`
	Filter string `json:"filter"`
}

// New validates cfg and returns a client; Run starts it.
func New(cfg Config, sink events.Sink) (*Client, error) {
	if err := validate(&cfg, sink); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, sink: sink, recheck: newRecheck(sink, recheckDelay), log: log.With("component", "realtime", "mode", cfg.Mode)}
	c.topic, c.binds = channelOf(cfg)
	c.mu.token = cfg.AccessToken
	if c.mu.token == "" {
		c.mu.token = cfg.APIKey
	}
	c.mu.wake = make(chan struct{}, 1)
	return c, nil
}

// Topic is the private Broadcast topic of node nodeID, as the database's
// waylume.node_topic(uuid) names it.
func Topic(nodeID string) string { return "waylume:node:" + strings.ToLower(nodeID) }

// channelOf returns the channel's topic and postgres_changes bindings.
func channelOf(cfg Config) (topic string, binds []binding) {
	if cfg.Mode == ModeBroadcast {
		return "realtime:" + Topic(cfg.NodeID), []binding{}
	}
	binds = []binding{
		{Event: "*", Schema: "waylume", Table: "peers", Filter: "node_id=eq." + cfg.NodeID},
		{Event: "*", Schema: "waylume", Table: "nodes", Filter: "id=eq." + cfg.NodeID},
	}
	if cfg.Canary != nil {
		binds = append(binds, binding{Event: "*", Schema: "waylume", Table: "node_canary", Filter: "node_id=eq." + cfg.NodeID})
	}
	return "realtime:waylume-node-" + cfg.NodeID, binds
}

// CheckURL accepts what the client dials: a ws:// or wss:// URL with a
// host (http and https too: the client maps them).
func CheckURL(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return errors.New("bad URL")
	}
	switch u.Scheme {
	case "ws", "wss", "http", "https":
	default:
		return fmt.Errorf("bad URL scheme %q: want wss:// (or ws://)", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("bad URL: no host")
	}
	return nil
}

// validate checks cfg and sink and fills in cfg's defaults.
func validate(cfg *Config, sink events.Sink) error {
	if cfg.URL == "" {
		return errors.New("realtime: URL is required")
	}
	if err := CheckURL(cfg.URL); err != nil {
		return fmt.Errorf("realtime: %w", err)
	}
	if cfg.APIKey == "" {
		return errors.New("realtime: APIKey is required")
	}
	if cfg.NodeID == "" {
		return errors.New("realtime: NodeID is required")
	}
	// The id goes into a filter; keep it to what a uuid can hold so it
	// cannot widen the filter ("x,y" would be an in-list on some servers).
	for _, c := range cfg.NodeID {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return fmt.Errorf("realtime: NodeID %q: only letters, digits and '-' allowed", cfg.NodeID)
		}
	}
	if sink == nil {
		return errors.New("realtime: sink is required")
	}
	switch cfg.Mode {
	case "":
		cfg.Mode = ModeBroadcast
	case ModeBroadcast, ModePostgresChanges:
	default:
		return fmt.Errorf("realtime: Mode %q: want %s or %s", cfg.Mode, ModeBroadcast, ModePostgresChanges)
	}
	switch cfg.VSN {
	case "":
		cfg.VSN = VSN1
	case VSN1, VSN2:
	default:
		return fmt.Errorf("realtime: VSN %q: want %s or %s", cfg.VSN, VSN1, VSN2)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.HeartbeatInterval, defaultHeartbeatInterval)
	def(&cfg.JoinTimeout, defaultJoinTimeout)
	def(&cfg.MinBackoff, defaultMinBackoff)
	def(&cfg.MaxBackoff, defaultMaxBackoff)
	def(&cfg.PermanentRetry, defaultPermanentRetry)
	def(&cfg.SubscribeTimeout, defaultSubscribeTimeout)
	def(&cfg.CanaryInterval, defaultCanaryInterval)
	def(&cfg.CanaryTimeout, defaultCanaryTimeout)
	def(&cfg.RejoinSpread, defaultRejoinSpread)
	def(&cfg.RateLimitBackoff, defaultRateLimitBackoff)
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	cfg.RejoinSpread = max(cfg.RejoinSpread, cfg.MinBackoff)
	cfg.RateLimitBackoff = max(cfg.RateLimitBackoff, cfg.RejoinSpread)
	return nil
}

// SetAccessToken replaces the JWT: it is pushed to the joined channel at
// once and used for every later join. Safe from any goroutine.
func (c *Client) SetAccessToken(token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if token == c.mu.token {
		return
	}
	c.mu.token = token
	c.mu.tokenGen++
	for _, ch := range []chan struct{}{c.mu.push, c.mu.wake} {
		if ch == nil {
			continue
		}
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (c *Client) token() (string, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.token, c.mu.tokenGen
}

// setPush installs the current session's token wake-up (nil: none).
func (c *Client) setPush(push chan struct{}) {
	c.mu.Lock()
	c.mu.push = push
	c.mu.Unlock()
}

func (c *Client) state(s State) {
	if c.cfg.OnState != nil {
		c.cfg.OnState(s)
	}
}

// Run keeps the subscription up until ctx ends, then returns ctx's error.
// It never gives up on its own: errors are logged, reported through
// OnState and retried.
func (c *Client) Run(ctx context.Context) error {
	defer c.recheck.stop()
	w := c.newWaits()
	sessions := 0
	for {
		if err := ctx.Err(); err != nil {
			c.state(State{Phase: Disconnected, Err: err, Sessions: sessions})
			return err
		}
		sessions++
		live, err := c.session(ctx, sessions)
		if ctx.Err() != nil {
			c.state(State{Phase: Disconnected, Err: ctx.Err(), Sessions: sessions})
			return ctx.Err()
		}
		wait, refused := w.after(live, err)
		switch {
		case refused != nil:
			c.log.Error("realtime subscription refused; retrying slowly: fix the cause",
				"err", err, "hint", refused.Hint(), "retry_in", wait)
		case isRateLimited(err):
			c.log.Warn("realtime: over the project's limits; backing off", "err", err, "retry_in", wait)
		default:
			c.log.Warn("realtime session ended; reconnecting", "err", err, "retry_in", wait)
		}
		c.state(State{Phase: Disconnected, Err: err, Retry: wait, Sessions: sessions, Refused: refused})
		if !c.sleep(ctx, wait, refused != nil, c.usedGen) {
			c.state(State{Phase: Disconnected, Err: ctx.Err(), Sessions: sessions})
			return ctx.Err()
		}
	}
}

// waits picks the delay before the next session.
type waits struct {
	cfg              *Config
	transient, limit *retry.Backoff
}

func (c *Client) newWaits() *waits {
	return &waits{cfg: &c.cfg,
		transient: retry.Policy{Initial: c.cfg.MinBackoff, Max: c.cfg.MaxBackoff}.New(),
		// Half the spread either way: a fleet told to slow down spreads
		// its next joins over minutes.
		limit: retry.Policy{Initial: c.cfg.RejoinSpread, Max: c.cfg.RateLimitBackoff, Jitter: 0.5}.New(),
	}
}

// after returns the wait after a session that ended with err (live: it
// was subscribed at some point), and the error when it is permanent.
func (w *waits) after(live bool, err error) (time.Duration, *Error) {
	var rerr *Error
	errors.As(err, &rerr)
	switch {
	case rerr != nil && rerr.Permanent:
		return w.cfg.PermanentRetry, rerr
	case rerr != nil && rerr.RateLimited:
		return w.limit.Next(), nil
	}
	w.limit.Reset()
	if !live {
		return w.transient.Next(), nil
	}
	// A session that got changes flowing earns a fresh backoff.
	w.transient.Reset()
	if errors.Is(err, ErrDeaf) {
		return w.transient.Next(), nil // the client's own verdict: no fleet in step
	}
	lo, hi := w.cfg.MinBackoff, w.cfg.RejoinSpread
	return lo + rand.N(hi-lo+1), nil
}

func isRateLimited(err error) bool {
	var rerr *Error
	return errors.As(err, &rerr) && rerr.RateLimited
}

// sleep waits d; a permanent error's wait ends early when a token newer
// than gen (the last one the server saw) arrives. It returns false when ctx ended.
func (c *Client) sleep(ctx context.Context, d time.Duration, permanent bool, gen uint64) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	c.mu.Lock()
	wake := c.mu.wake
	c.mu.Unlock()
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
			if _, g := c.token(); g != gen {
				return true
			}
		}
	}
}

// dialURL adds apikey and vsn to the configured URL.
func (c *Client) dialURL() string {
	u, _ := url.Parse(c.cfg.URL) // validated in New
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	}
	q := u.Query()
	q.Set("apikey", c.cfg.APIKey)
	q.Set("vsn", c.cfg.VSN)
	u.RawQuery = q.Encode()
	return u.String()
}
