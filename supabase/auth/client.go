package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client calls a project's Auth (GoTrue) API at <project URL>/auth/v1:
// the password and refresh grants with a publishable (or anon) key, and
// the admin users API with a secret (or service role) key. Request bodies
// carry the secrets; URLs, errors and logs never do.
type Client struct {
	base   string // https://<ref>.supabase.co/auth/v1
	apiKey string
	http   *http.Client
}

// DefaultTimeout bounds one Auth call when the caller's context does not.
const DefaultTimeout = 15 * time.Second

// NewClient makes a client for the project at projectURL
// (https://<ref>.supabase.co) with apiKey sent as the apikey header.
func NewClient(projectURL, apiKey string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(projectURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errors.New("auth: want the project URL, https://<ref>.supabase.co")
	}
	if apiKey == "" {
		return nil, errors.New("auth: an API key is required")
	}
	if hc == nil {
		hc = &http.Client{Timeout: DefaultTimeout}
	}
	return &Client{base: strings.TrimRight(u.String(), "/") + "/auth/v1", apiKey: apiKey, http: hc}, nil
}

// Session is what a grant returns: an access token for Realtime and the
// Data API, and the single-use refresh token that renews it.
type Session struct {
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token"`
	ExpiresIn    int64     `json:"expires_in"`
	ExpiresAt    int64     `json:"expires_at"`
	User         User      `json:"user"`
	Received     time.Time `json:"-"`
}

// Expiry is when the access token stops working, by the server's
// expires_at or, without it, expires_in from receipt.
func (s Session) Expiry() time.Time {
	if s.ExpiresAt > 0 {
		return time.Unix(s.ExpiresAt, 0)
	}
	return s.Received.Add(time.Duration(s.ExpiresIn) * time.Second)
}

// User is an Auth user as the API returns it.
type User struct {
	ID           string         `json:"id"`
	Email        string         `json:"email"`
	AppMetadata  map[string]any `json:"app_metadata"`
	BannedUntil  string         `json:"banned_until,omitempty"`
	ConfirmedAt  string         `json:"email_confirmed_at,omitempty"`
	LastSignInAt string         `json:"last_sign_in_at,omitempty"`
}

// NodeID is the node the user stands for (app_metadata.node_id), or "".
func (u User) NodeID() string {
	id, _ := u.AppMetadata["node_id"].(string)
	return id
}

// SignInWithPassword is the password grant.
func (c *Client) SignInWithPassword(ctx context.Context, email, password string) (Session, error) {
	return c.grant(ctx, "password", map[string]string{"email": email, "password": password})
}

// Refresh trades a refresh token for a new session. Refresh tokens are
// single use: the old one must not be sent again after the server's reuse
// window (SessionSource takes care of that).
func (c *Client) Refresh(ctx context.Context, refreshToken string) (Session, error) {
	return c.grant(ctx, "refresh_token", map[string]string{"refresh_token": refreshToken})
}

func (c *Client) grant(ctx context.Context, kind string, body any) (Session, error) {
	var s Session
	if err := c.do(ctx, http.MethodPost, "/token?grant_type="+kind, "", body, &s); err != nil {
		return Session{}, fmt.Errorf("auth %s grant: %w", kind, err)
	}
	if s.AccessToken == "" || s.RefreshToken == "" {
		return Session{}, fmt.Errorf("auth %s grant: %w", kind, errors.New("no tokens in the answer"))
	}
	s.Received = time.Now()
	return s, nil
}

// do sends one request; bearer, when set, goes in Authorization. A
// non-2xx answer is an *APIError.
func (c *Client) do(ctx context.Context, method, path, bearer string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("apikey", c.apiKey)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Client-Info", "waylume-node")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &NetError{err: redactURL(err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &NetError{err: err}
	}
	if resp.StatusCode/100 != 2 {
		return apiError(resp.StatusCode, b)
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

// redactURL keeps url.Error's operation and cause but not the query.
func redactURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery = ""
			return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
		}
	}
	return err
}
