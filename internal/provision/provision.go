// Package provision is the operator's side of a node's credentials: its
// row and database login role (the SQL of package migrations), its Supabase
// Auth user (the Admin API of supabase/auth) with the 0600 env and password
// files the node reads, revocation of all of them, a peer's client
// configuration and WireGuard key files. Secrets go to files, never into
// errors.
package provision

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5"

	"github.com/waylume/waylume-node/migrations"
	"github.com/waylume/waylume-node/supabase"
	"github.com/waylume/waylume-node/supabase/auth"
)

// Node is what Create makes: the row, and the credentials asked for.
type Node struct {
	Spec              migrations.NodeSpec
	LoginPasswordFile string    // "": no login role
	Auth              *AuthUser // nil: no Auth user
}

// Created is what Create made; after an error, as far as it got.
type Created struct {
	ID    string
	Login string // the login role's name, when made
	User  *User  // the Auth user, when made
}

// Create inserts the node's row (waylume.create_node) and makes the
// credentials n asks for. An error after the row names the node, which
// exists then.
func Create(ctx context.Context, dbURL string, n Node) (Created, error) {
	var out Created
	err := withConn(ctx, dbURL, func(conn *pgx.Conn) error {
		id, err := migrations.CreateNode(ctx, conn, n.Spec)
		if err != nil {
			return err
		}
		out.ID = id
		if n.LoginPasswordFile == "" {
			return nil
		}
		login, err := newLogin(ctx, conn, id, n.LoginPasswordFile)
		if err != nil {
			return fmt.Errorf("node %s created, login role failed: %w", id, err)
		}
		out.Login = login.Role
		return nil
	})
	if err != nil || n.Auth == nil {
		return out, err
	}
	u, err := NewUser(ctx, out.ID, *n.Auth)
	if err != nil {
		return out, fmt.Errorf("node %s created, Auth user failed: %w", out.ID, err)
	}
	out.User = &u
	return out, nil
}

// Login is a node's database login role.
type Login struct {
	Role     string
	Password string // empty when it went to a file
}

// NewLogin creates (or resets) node id's login role with a random
// password, written to passwordFile (0600) unless that is "", when it is
// returned instead.
func NewLogin(ctx context.Context, dbURL, id, passwordFile string) (Login, error) {
	var out Login
	err := withConn(ctx, dbURL, func(conn *pgx.Conn) (err error) {
		out, err = newLogin(ctx, conn, id, passwordFile)
		return err
	})
	return out, err
}

func newLogin(ctx context.Context, conn *pgx.Conn, id, passwordFile string) (Login, error) {
	role, pw, err := migrations.CreateNodeLogin(ctx, conn, id)
	if err != nil {
		return Login{}, err
	}
	if passwordFile == "" {
		return Login{Role: role, Password: pw}, nil
	}
	return Login{Role: role}, writePassword(passwordFile, pw)
}

// Revoked is what Revoke ended.
type Revoked struct {
	Said  []string // waylume.revoke_node's account, one line each
	Users []string // the Auth users deleted or banned through the Admin API
}

// Revoke runs waylume.revoke_node and, with admin, deletes (or with ban,
// bans) the node's Auth users. An error from the Admin API comes with the
// database side done and its lines in Said.
func Revoke(ctx context.Context, dbURL, id string, admin *auth.Client, ban bool) (Revoked, error) {
	var out Revoked
	err := withConn(ctx, dbURL, func(conn *pgx.Conn) (err error) {
		out.Said, err = migrations.RevokeNode(ctx, conn, id)
		return err
	})
	if err != nil || admin == nil {
		return out, err
	}
	if out.Users, err = admin.RevokeNodeUsers(ctx, id, ban); err != nil {
		return out, fmt.Errorf("database side done; Auth users: %w", err)
	}
	return out, nil
}

// withConn runs f on one connection to the database.
func withConn(ctx context.Context, dbURL string, f func(*pgx.Conn) error) error {
	conn, err := supabase.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return f(conn)
}

// writePassword puts a generated password in its file, readable by the
// owner only: it is printed nowhere else.
func writePassword(path, password string) error {
	if err := os.WriteFile(path, []byte(password+"\n"), 0o600); err != nil {
		return fmt.Errorf("write password file: %w", err)
	}
	return nil
}
