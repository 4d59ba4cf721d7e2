package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/waylume/waylume-node/internal/parse"
	"github.com/waylume/waylume-node/internal/provision"
	"github.com/waylume/waylume-node/supabase/auth"
)

// authFlags are the Auth user flags of node create and node auth.
type authFlags struct {
	email, envFile, pwFile, secretFile *string
}

func bindAuthFlags(fs interface {
	String(name, value, usage string) *string
}) authFlags {
	return authFlags{
		email:      fs.String("auth-email", "", "make the node's Supabase Auth user with this email (needs WAYLUME_SUPABASE_URL and a secret key)"),
		envFile:    fs.String("env-file", "", "write the node's settings here (0600): node id, project URL, publishable key, Auth email and password file"),
		pwFile:     fs.String("auth-password-file", "", "where the Auth password is written (0600) and read by the node (default: the env file + .password)"),
		secretFile: fs.String("secret-key-file", "", "file holding the project's secret key (sb_secret_..., or the legacy service role key); env WAYLUME_SUPABASE_SECRET_KEY holds the key itself"),
	}
}

// authAdmin is an Admin API client with the secret key, after checking
// what provisioning needs. Errors never quote the key.
func (c *cli) authAdmin(cfg Config, af authFlags) (*auth.Client, error) {
	switch {
	case cfg.SupabaseURL == "":
		return nil, errors.New("missing --supabase-url (WAYLUME_SUPABASE_URL): the project's Auth")
	case *af.email != "" && *af.envFile == "":
		return nil, errors.New("missing --env-file: the node's settings are written there, never printed")
	case *af.email != "" && !strings.Contains(*af.email, "@"):
		return nil, errors.New("invalid --auth-email: not an email address")
	}
	key, ok := c.getenv("WAYLUME_SUPABASE_SECRET_KEY")
	if *af.secretFile != "" {
		var err error
		if key, err = auth.ReadSecretFile(*af.secretFile); err != nil {
			return nil, fmt.Errorf("invalid --secret-key-file: %v", err)
		}
		ok = true
	}
	if !ok || key == "" {
		return nil, errors.New("missing --secret-key-file (or WAYLUME_SUPABASE_SECRET_KEY): the project's secret key")
	}
	if strings.HasPrefix(key, "sb_publishable_") {
		return nil, errors.New("invalid --secret-key-file: that is the publishable key; the Admin API needs the secret key")
	}
	return auth.NewClient(cfg.SupabaseURL, key, nil)
}

// authUser is the Auth user node create or node auth asks for.
func (c *cli) authUser(cfg Config, af authFlags) (*provision.AuthUser, error) {
	admin, err := c.authAdmin(cfg, af)
	if err != nil {
		return nil, err
	}
	return &provision.AuthUser{Admin: admin, Email: *af.email, EnvFile: *af.envFile, PasswordFile: *af.pwFile,
		ProjectURL: cfg.SupabaseURL, APIKey: cfg.SupabaseKey}, nil
}

// userMade says where an Auth user's settings went: only their paths.
func (c *cli) userMade(cfg Config, id string, u provision.User) {
	if cfg.SupabaseKey == "" {
		fmt.Fprintln(c.stderr, "note: no WAYLUME_SUPABASE_KEY given: add the publishable key to the env file")
	}
	fmt.Fprintf(c.stderr, "Auth user %s for node %s; settings in %s, password in %s\n", u.ID, id, u.EnvFile, u.PasswordFile)
}

func (c *cli) nodeAuth(args []string) int {
	fs := c.flagSet("node auth", "", "Create an existing node's Supabase Auth user and write its settings.", forNode)
	cf := bindConfig(fs, forNode)
	nodeID := fs.String("node-id", "", "the node's id")
	af := bindAuthFlags(fs)
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	id := strings.ToLower(*nodeID)
	if !parse.IsUUID(id) {
		fmt.Fprintln(c.stderr, "waylume-node: invalid --node-id: not a UUID (waylume.nodes.id)")
		return exitConfig
	}
	if *af.email == "" {
		fmt.Fprintln(c.stderr, "waylume-node: missing --auth-email: required")
		return exitConfig
	}
	a, err := c.authUser(cfg, af)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node: %s\n", err)
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	u, err := provision.NewUser(ctx, id, *a)
	if err != nil {
		return c.fail("node auth", err)
	}
	c.userMade(cfg, id, u)
	fmt.Fprintln(c.stdout, id)
	return exitOK
}

// nodeRevoke runs waylume.revoke_node and, with a secret key, deletes (or
// bans) the node's Auth users through the Admin API.
func (c *cli) nodeRevoke(args []string) int {
	fs := c.flagSet("node revoke", "", "Revoke every credential of one node at once; its current peers stay up.", forNode)
	cf := bindConfig(fs, forNode)
	nodeID := fs.String("node-id", "", "the node's id")
	ban := fs.Bool("ban", false, "ban the node's Auth users instead of deleting them")
	af := bindAuthFlags(fs)
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "database-url") {
		return exitConfig
	}
	id := strings.ToLower(*nodeID)
	if !parse.IsUUID(id) {
		fmt.Fprintln(c.stderr, "waylume-node: invalid --node-id: not a UUID (waylume.nodes.id)")
		return exitConfig
	}
	var admin *auth.Client
	if _, env := c.getenv("WAYLUME_SUPABASE_SECRET_KEY"); env || *af.secretFile != "" {
		var err error
		if admin, err = c.authAdmin(cfg, af); err != nil {
			fmt.Fprintf(c.stderr, "waylume-node: %s\n", err)
			return exitConfig
		}
	}
	ctx, cancel := context.WithTimeout(c.ctx, 60*time.Second)
	defer cancel()
	done, err := provision.Revoke(ctx, cfg.DatabaseURL, id, admin, *ban)
	for _, l := range done.Said {
		fmt.Fprintln(c.stdout, l)
	}
	if err != nil {
		return c.fail("node revoke", err)
	}
	if admin == nil {
		fmt.Fprintln(c.stdout, "Auth users not touched through the Admin API: no secret key given")
		return exitOK
	}
	verb := map[bool]string{true: "banned", false: "deleted"}[*ban]
	fmt.Fprintf(c.stdout, "%d Auth user(s) %s through the Admin API %v\n", len(done.Users), verb, done.Users)
	return exitOK
}
