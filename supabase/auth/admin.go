package auth

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// UserSpec is what the admin API sets on a user; zero fields are left
// alone.
type UserSpec struct {
	Email        string         `json:"email,omitempty"`
	Password     string         `json:"password,omitempty"`
	EmailConfirm bool           `json:"email_confirm,omitempty"`
	AppMetadata  map[string]any `json:"app_metadata,omitempty"`
	// BanDuration is Auth's ban_duration: a Go-style duration ("876000h")
	// or "none" to lift a ban.
	BanDuration string `json:"ban_duration,omitempty"`
}

// Forever is a ban without end (100 years, as Auth's own tooling uses).
const Forever = "876000h"

// CreateUser makes a user (POST /admin/users). The client's key must be a
// secret (or service role) key.
func (c *Client) CreateUser(ctx context.Context, u UserSpec) (User, error) {
	var out User
	if err := c.do(ctx, http.MethodPost, "/admin/users", c.apiKey, u, &out); err != nil {
		return User{}, fmt.Errorf("auth create user: %w", err)
	}
	return out, nil
}

// UpdateUser changes a user (PUT /admin/users/<id>).
func (c *Client) UpdateUser(ctx context.Context, id string, u UserSpec) (User, error) {
	var out User
	if err := c.do(ctx, http.MethodPut, "/admin/users/"+url.PathEscape(id), c.apiKey, u, &out); err != nil {
		return User{}, fmt.Errorf("auth update user: %w", err)
	}
	return out, nil
}

// DeleteUser removes a user and its sessions (DELETE /admin/users/<id>).
func (c *Client) DeleteUser(ctx context.Context, id string) error {
	if err := c.do(ctx, http.MethodDelete, "/admin/users/"+url.PathEscape(id), c.apiKey, nil, nil); err != nil {
		return fmt.Errorf("auth delete user: %w", err)
	}
	return nil
}

// NodeUsers lists the users whose app_metadata.node_id is nodeID, reading
// the admin users list page by page.
func (c *Client) NodeUsers(ctx context.Context, nodeID string) ([]User, error) {
	var out []User
	for page := 1; ; page++ {
		var resp struct {
			Users []User `json:"users"`
		}
		path := fmt.Sprintf("/admin/users?page=%d&per_page=200", page)
		if err := c.do(ctx, http.MethodGet, path, c.apiKey, nil, &resp); err != nil {
			return nil, fmt.Errorf("auth list users: %w", err)
		}
		for _, u := range resp.Users {
			if strings.EqualFold(u.NodeID(), nodeID) {
				out = append(out, u)
			}
		}
		if len(resp.Users) < 200 || page >= 10000 {
			return out, nil
		}
	}
}

// Banned says whether the user is banned now.
func (u User) Banned(now time.Time) bool {
	if u.BannedUntil == "" {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, u.BannedUntil)
	return err != nil || t.After(now)
}

// CreateNodeUser makes the Auth user node nodeID signs in as: email
// confirmed, app_metadata.node_id set (only a secret key can set it, so
// the claim is trustworthy), a random password, which is returned and
// kept nowhere else.
func (c *Client) CreateNodeUser(ctx context.Context, nodeID, email string) (User, string, error) {
	b := make([]byte, 32)
	rand.Read(b)
	password := base64.RawURLEncoding.EncodeToString(b)
	u, err := c.CreateUser(ctx, UserSpec{Email: email, Password: password, EmailConfirm: true,
		AppMetadata: map[string]any{"node_id": nodeID}})
	if err != nil {
		return User{}, "", err
	}
	return u, password, nil
}

// RevokeNodeUsers deletes every Auth user of node nodeID, or with ban
// bans it without end; deleting or banning ends its refresh tokens. It
// returns the users' ids.
func (c *Client) RevokeNodeUsers(ctx context.Context, nodeID string, ban bool) ([]string, error) {
	users, err := c.NodeUsers(ctx, nodeID)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, u := range users {
		if ban {
			_, err = c.UpdateUser(ctx, u.ID, UserSpec{BanDuration: Forever})
		} else {
			err = c.DeleteUser(ctx, u.ID)
		}
		if err != nil {
			return ids, err
		}
		ids = append(ids, u.ID)
	}
	return ids, nil
}

// NodeSettings are what a node needs to sign in as its Auth user.
type NodeSettings struct {
	NodeID, UserID, ProjectURL, APIKey, Email, PasswordFile string
}

// WriteEnvFile writes the settings as WAYLUME_* lines, readable by the
// owner only. The password stays in its own file.
func (n NodeSettings) WriteEnvFile(path string) error {
	env := fmt.Sprintf("# waylume-node settings of node %s (Auth user %s), from `waylume-node node`\n"+
		"WAYLUME_NODE_ID=%s\nWAYLUME_SUPABASE_URL=%s\nWAYLUME_SUPABASE_KEY=%s\nWAYLUME_AUTH_EMAIL=%s\nWAYLUME_AUTH_PASSWORD_FILE=%s\n"+
		"# WAYLUME_DATABASE_URL: the node's login role (waylume-node node login), sslmode=verify-full\n",
		n.NodeID, n.UserID, n.NodeID, n.ProjectURL, n.APIKey, n.Email, n.PasswordFile)
	if err := os.WriteFile(path, []byte(env), 0o600); err != nil {
		return fmt.Errorf("write env file: %w", err)
	}
	return nil
}
