package realtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
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
	readLimit                = 32 << 20 // the server caps records near 1 MB; leave room
	writeTimeout             = 10 * time.Second
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
	Logger         *slog.Logger
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
}

// Client is a postgres_changes subscription for one node.
//
// Locking: mu guards only the token and the current session's token
// channel, which SetAccessToken uses from other goroutines; everything else
// belongs to Run's goroutine.
type Client struct {
	cfg   Config
	sink  events.Sink
	log   *slog.Logger
	topic string
	binds []binding
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
	c := &Client{
		cfg:   cfg,
		sink:  sink,
		log:   log.With("component", "realtime"),
		topic: "realtime:waylume-node-" + cfg.NodeID,
		binds: []binding{
			{Event: "*", Schema: "waylume", Table: "peers", Filter: "node_id=eq." + cfg.NodeID},
			{Event: "*", Schema: "waylume", Table: "nodes", Filter: "id=eq." + cfg.NodeID},
		},
	}
	c.mu.token = cfg.AccessToken
	if c.mu.token == "" {
		c.mu.token = cfg.APIKey
	}
	c.mu.wake = make(chan struct{}, 1)
	return c, nil
}

// validate checks cfg and sink and fills in cfg's defaults.
func validate(cfg *Config, sink events.Sink) error {
	if cfg.URL == "" {
		return errors.New("realtime: URL is required")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return fmt.Errorf("realtime: URL: %w", err)
	}
	switch u.Scheme {
	case "ws", "wss", "http", "https":
	default:
		return fmt.Errorf("realtime: URL scheme %q: want ws, wss, http or https", u.Scheme)
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
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
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
	bo := retry.Policy{Initial: c.cfg.MinBackoff, Max: c.cfg.MaxBackoff}.New()
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
		if live {
			// A session that got changes flowing earns a fresh backoff.
			bo.Reset()
		}
		var rerr *Error
		permanent := errors.As(err, &rerr) && rerr.Permanent
		wait := bo.Next()
		if permanent {
			wait = c.cfg.PermanentRetry
			c.log.Error("realtime subscription refused; retrying slowly: fix the cause (token, key, publication)",
				"err", err, "retry_in", wait)
		} else {
			c.log.Warn("realtime session ended; reconnecting", "err", err, "retry_in", wait)
		}
		c.state(State{Phase: Disconnected, Err: err, Retry: wait, Sessions: sessions})
		if !c.sleep(ctx, wait, permanent, c.usedGen) {
			c.state(State{Phase: Disconnected, Err: ctx.Err(), Sessions: sessions})
			return ctx.Err()
		}
	}
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
