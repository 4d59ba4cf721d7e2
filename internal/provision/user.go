package provision

import (
	"context"

	"github.com/waylume/waylume-node/supabase/auth"
)

// AuthUser asks for a node's Supabase Auth user.
type AuthUser struct {
	Admin        *auth.Client // with the project's secret key
	Email        string
	EnvFile      string // the node's settings, written 0600
	PasswordFile string // the user's password, 0600; "": EnvFile + ".password"
	ProjectURL   string
	APIKey       string // the publishable key for the env file; may be empty
}

// User is an Auth user made, and where its settings went.
type User struct {
	ID           string
	EnvFile      string
	PasswordFile string
}

// NewUser makes node id's Auth user (app_metadata.node_id, a confirmed
// email, a random password) and writes its password file and the node's
// env file.
func NewUser(ctx context.Context, id string, a AuthUser) (User, error) {
	pwFile := a.PasswordFile
	if pwFile == "" {
		pwFile = a.EnvFile + ".password"
	}
	user, password, err := a.Admin.CreateNodeUser(ctx, id, a.Email)
	if err != nil {
		return User{}, err
	}
	if err := writePassword(pwFile, password); err != nil {
		return User{}, err
	}
	settings := auth.NodeSettings{NodeID: id, UserID: user.ID, ProjectURL: a.ProjectURL, APIKey: a.APIKey,
		Email: a.Email, PasswordFile: pwFile}
	if err := settings.WriteEnvFile(a.EnvFile); err != nil {
		return User{}, err
	}
	return User{ID: user.ID, EnvFile: a.EnvFile, PasswordFile: pwFile}, nil
}
