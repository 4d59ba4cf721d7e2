package realtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Error is a protocol-level failure: a refused upgrade, a join error
// reply, a system error, a server-side channel end or a missed deadline.
type Error struct {
	Op string // "upgrade", "join", "subscribe", "channel", "heartbeat"
	// Status is the HTTP status of a refused upgrade, else 0.
	Status int
	// Reason is the server's text, e.g. "InvalidJWTToken: Token has expired
	// 73 seconds ago" (tokens never appear in it).
	Reason string
	// Code is the reason's code, the text before its first colon (e.g.
	// "Unauthorized", "ClientJoinRateLimitReached"); empty when none.
	Code string
	// Permanent errors are not fixed by retrying soon; the client retries
	// them only every PermanentRetry (or when a new token is set).
	Permanent bool
	// RateLimited errors are the project's limits: the client backs off
	// with jitter up to minutes so a fleet does not stay over them.
	RateLimited bool

	kind error // ErrChannelClosed or ErrChannelCrashed for Op "channel"
}

// How the server ended the channel (Op "channel"): a close is deliberate
// (a token problem, a second join), a crash is the channel process dying;
// both are answered with a rejoin. ErrDeaf (Op "liveness") is the client's
// own verdict: the channel answered heartbeats but its canary never came
// back.
var (
	ErrChannelClosed  = errors.New("channel closed by the server (phx_close)")
	ErrChannelCrashed = errors.New("channel crashed on the server (phx_error)")
	ErrDeaf           = errors.New("channel stopped delivering")
)

func (e *Error) Error() string {
	s := "realtime " + e.Op
	if e.Status != 0 {
		s += fmt.Sprintf(": HTTP %d", e.Status)
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Unwrap makes errors.Is find ErrChannelClosed and ErrChannelCrashed.
func (e *Error) Unwrap() error { return e.kind }

// upgradeError turns a refused websocket upgrade into an Error with the
// server's JSON error text.
func upgradeError(resp *http.Response, err error) error {
	if resp == nil || resp.StatusCode == http.StatusSwitchingProtocols {
		return fmt.Errorf("realtime dial: %w", redact(err))
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
	return &Error{Op: "upgrade", Status: s, Reason: reason,
		Permanent:   s == http.StatusUnauthorized || s == http.StatusForbidden || s == http.StatusNotFound,
		RateLimited: s == http.StatusTooManyRequests}
}

// redact strips the query string (the apikey) from dial errors, which
// quote the URL.
func redact(err error) error {
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

// permanentCodes are join-reply reason codes that a retry with the same
// configuration and credentials cannot fix. JwtSignerError: the project
// has no key to verify the token with (no JWT secret, or no JWKS key with
// the token's kid).
var permanentCodes = map[string]bool{
	"InvalidJWTToken":           true,
	"JwtSignatureError":         true,
	"JwtSignerError":            true,
	"MalformedJWT":              true,
	"Unauthorized":              true,
	"PrivateOnly":               true,
	"TenantNotFound":            true,
	"TopicNameRequired":         true,
	"RealtimeDisabledForTenant": true,
}

// rateLimitCodes are the project's limits on joins, connections and
// channels, and on the server's connections to the project's database
// (attempts per second, pool size, the database's own limit): a fleet
// retrying those at once keeps them exhausted.
var rateLimitCodes = map[string]bool{
	"ClientJoinRateLimitReached":         true,
	"ConnectionRateLimitReached":         true,
	"ChannelRateLimitReached":            true,
	"DatabaseConnectionRateLimitReached": true,
	"IncreaseConnectionPool":             true,
	"DatabaseLackOfConnections":          true,
}

func joinError(reason string) *Error {
	code, _, _ := strings.Cut(reason, ":")
	code = strings.TrimSpace(code)
	return &Error{Op: "join", Reason: reason, Code: code,
		Permanent:   permanentCodes[code] || badParameters(reason),
		RateLimited: rateLimitCodes[code]}
}

// badParameters says whether a join or subscription error blames the
// bindings: the server never retries these.
func badParameters(msg string) bool {
	return strings.HasPrefix(msg, "Unable to subscribe to changes") || strings.HasPrefix(msg, "Error parsing `filter` params")
}

// permanentSubscribe says whether a postgres_changes system error is one
// the server never retries (bad parameters, table not in the publication).
func permanentSubscribe(msg string) bool { return badParameters(msg) }

// tokenProblem says whether a system error that preceded a channel close
// blames the token or what it may read: a retry with the same token would
// be closed or refused again.
func tokenProblem(msg string) bool {
	m := strings.ToLower(msg)
	// The server words some as atoms: ":signature_error" for a bad pushed
	// token, ":error_generating_signer" when the project has no key for it.
	// "You no longer have permission to read from this Channel topic"
	// follows a pushed token whose role may not read the topic.
	for _, s := range []string{"token", "jwt", "signature", "signer", "no longer have permission"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// Hint says what to fix for a permanent error, naming the grant or policy
// a refused private join lacks; empty when there is nothing to add.
func (e *Error) Hint() string {
	switch {
	case e.Code == "Unauthorized":
		return "the token's role may not read the topic: it needs USAGE on schema realtime, SELECT on realtime.messages " +
			"and the policy waylume_node_receive_<role> on realtime.messages (migration 0006_broadcast), " +
			"and the token's node_id (app_metadata.node_id for role authenticated) must be this node's"
	case e.Code == "PrivateOnly":
		return "the project allows private channels only: use WAYLUME_REALTIME_MODE=broadcast"
	case e.Code == "JwtSignatureError" || e.Code == "InvalidJWTToken" || e.Code == "MalformedJWT":
		return "the access token is not accepted by this project: mint a new one (waylume-node token) or check the signing key"
	case e.Code == "JwtSignerError":
		return "the project has no key to verify the token with: its kid must name a key of the project's JWKS, " +
			"or the project needs the JWT secret an HS256 token was signed with"
	case badParameters(e.Reason):
		return "the tables are not in publication supabase_realtime or a filter is wrong: run waylume-node migrate"
	}
	return ""
}
