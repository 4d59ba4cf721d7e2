package preflight

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/waylume/waylume-node/migrations"
	"github.com/waylume/waylume-node/supabase"
	"github.com/waylume/waylume-node/supabase/auth"
	"github.com/waylume/waylume-node/supabase/realtime"
)

// checkDatabase covers the control plane: reachable, migrated, the node row,
// an event source (LISTEN or Realtime) and the publication.
func checkDatabase(ctx context.Context, cfg Config) []Result {
	if cfg.DatabaseURL == "" {
		return []Result{fail("database", "WAYLUME_DATABASE_URL not set", "set WAYLUME_DATABASE_URL (Supabase: direct connection or session pooler)")}
	}
	tlsLine := DatabaseTLS(cfg.DatabaseURL)
	conn, err := supabase.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return []Result{tlsLine, fail("database", oneLine(err.Error()),
			"check the URL, password and network; Supabase direct connections may be IPv6-only: use the session pooler (port 5432 on pooler.supabase.com)")}
	}
	defer conn.Close(context.Background())
	serverVersion, err := supabase.ServerVersion(ctx, conn)
	if err != nil {
		return []Result{tlsLine, fail("database", oneLine(err.Error()), "check the role's permissions")}
	}
	schema := migrations.Verify(ctx, conn)
	out := []Result{tlsLine, pass("database", "reachable (PostgreSQL "+serverVersion+")"),
		checkMigrated(schema), checkNodeRow(ctx, conn, cfg.NodeID)}
	switch {
	case cfg.RealtimeURL == "":
		out = append(out, checkListen(ctx, conn, cfg.DatabaseURL))
	case cfg.AuthEmail != "":
		r, tok := checkAuth(ctx, cfg)
		out = append(out, r)
		if r.OK {
			cfg.AccessToken = tok
			out = append(out, checkRealtime(ctx, cfg))
		}
	default:
		out = append(out, checkRealtime(ctx, cfg))
	}
	return append(out, checkPublication(schema))
}

// DatabaseTLS judges a database URL's sslmode (supabase.CheckDatabaseURL
// refused plain text already): anything short of verify-full lets an
// on-path attacker with any certificate in, which is a warning.
func DatabaseTLS(dbURL string) Result {
	const fix = "download the project's CA certificate and use sslmode=verify-full&sslrootcert=/path/to/ca.crt"
	pc, err := pgconn.ParseConfig(dbURL)
	if err != nil {
		return fail("database_tls", "connection string does not parse", "see the database line")
	}
	r := pass("database_tls", "")
	switch supabase.DatabaseTLS(pc) {
	case supabase.TLSLocal:
		r.Detail = "local connection (loopback or unix socket): no TLS needed"
	case supabase.TLSVerifyFull:
		r.Detail = "sslmode=verify-full: certificate and host name verified"
	case supabase.TLSOff:
		return fail("database_tls", "a remote host may be reached in plain text", fix)
	case supabase.TLSVerifyCA:
		r.Warn, r.Fix = true, fix
		r.Detail = "sslmode=verify-ca: the certificate chain is verified, the host name is not"
	default:
		r.Warn, r.Fix = true, fix
		r.Detail = "sslmode=require: encrypted, but the server is not verified (an on-path attacker can impersonate it)"
	}
	return r
}

// checkMigrated compares the recorded versions with the embedded ones.
func checkMigrated(r migrations.Report) Result {
	const fix = "run waylume-node migrate with the owner's credentials"
	switch {
	case errors.Is(r.VersionsErr, migrations.ErrNotInstalled):
		return fail("migrations", "schema waylume not installed", fix)
	case errors.Is(r.VersionsErr, migrations.ErrNoAccess):
		// The node row check still proves the schema is usable.
		return pass("migrations", "not verified: this role (node credentials) cannot read the version table")
	case r.VersionsErr != nil:
		return fail("migrations", oneLine(r.VersionsErr.Error()), fix)
	case len(r.Missing) > 0:
		return fail("migrations", "not applied: "+strings.Join(r.Missing, ", "), fix)
	}
	n := len(migrations.Versions())
	return pass("migrations", fmt.Sprintf("%d of %d applied", n, n))
}

func checkNodeRow(ctx context.Context, conn *pgx.Conn, nodeID string) Result {
	if nodeID == "" {
		return fail("node", "WAYLUME_NODE_ID not set", "create the node (waylume-node node create) and set WAYLUME_NODE_ID to its id")
	}
	n, err := supabase.NodeRow(ctx, conn, nodeID)
	switch {
	case errors.Is(err, supabase.ErrNotFound):
		return fail("node", "no row "+nodeID+" in waylume.nodes visible to this role",
			"create it (waylume-node node create) or fix WAYLUME_NODE_ID / the node's credentials")
	case err != nil:
		return fail("node", oneLine(err.Error()), "run waylume-node migrate; check the role's grants")
	}
	return pass("node", fmt.Sprintf("row %s (%s)", nodeID, n.Name))
}

func checkListen(ctx context.Context, conn *pgx.Conn, dbURL string) Result {
	const fix = "set WAYLUME_REALTIME_URL (and WAYLUME_SUPABASE_KEY, WAYLUME_ACCESS_TOKEN): Realtime is required as the event source here, or connect directly / through the session pooler"
	if supabase.TransactionPooler(dbURL) {
		return fail("events", "the transaction pooler (port 6543) does not support LISTEN", fix)
	}
	if err := supabase.ListenRoundTrip(ctx, conn); err != nil {
		return fail("events", oneLine(err.Error()), fix)
	}
	return pass("events", "LISTEN/NOTIFY works (no WAYLUME_REALTIME_URL: the node uses it)")
}

// checkAuth signs in as the node's Auth user, as run does, and checks
// that the user stands for this node (app_metadata.node_id).
func checkAuth(ctx context.Context, cfg Config) (Result, string) {
	const fix = "check WAYLUME_AUTH_EMAIL, the password file and WAYLUME_SUPABASE_KEY (publishable); a revoked node's user is gone: waylume-node node auth makes a new one"
	client, err := auth.NewClient(cfg.SupabaseURL, cfg.SupabaseKey, nil)
	if err != nil {
		return fail("auth", oneLine(err.Error()), "fix WAYLUME_SUPABASE_URL"), ""
	}
	s, err := client.SignInWithPassword(ctx, cfg.AuthEmail, cfg.AuthPassword)
	if err != nil {
		return fail("auth", oneLine(err.Error()), fix), ""
	}
	if got := s.User.NodeID(); got != cfg.NodeID {
		return fail("auth", fmt.Sprintf("Auth user %s has app_metadata.node_id %q, not this node", s.User.ID, got),
			"make the node's user with waylume-node node auth --node-id "+cfg.NodeID), ""
	}
	return pass("auth", fmt.Sprintf("signed in as Auth user %s (app_metadata.node_id matches; token for %s)",
		s.User.ID, time.Until(s.Expiry()).Round(time.Second))), s.AccessToken
}

// checkRealtime joins the node's channel the way run does and waits for
// "Subscribed to PostgreSQL", which proves the URL, the key, the token and
// the server's view of the publication.
func checkRealtime(ctx context.Context, cfg Config) Result {
	host := cfg.RealtimeURL
	if u, err := url.Parse(cfg.RealtimeURL); err == nil {
		host = u.Host
	}
	err := realtime.Probe(ctx, realtime.Config{
		URL: cfg.RealtimeURL, APIKey: cfg.SupabaseKey, AccessToken: cfg.AccessToken, NodeID: cfg.NodeID,
		Mode: cfg.RealtimeMode, Logger: slog.New(slog.DiscardHandler),
	}, 20*time.Second)
	var rerr *realtime.Error
	switch {
	case err == nil:
		return pass("realtime", cfg.RealtimeMode+" subscribed at "+host)
	case errors.Is(err, realtime.ErrProbeTimeout):
		return fail("realtime", "no subscription within 20s at "+host, "check that Realtime is enabled and reachable from this host")
	case errors.As(err, &rerr) && rerr.Hint() != "":
		return fail("realtime", oneLine(err.Error()), rerr.Hint())
	}
	return fail("realtime", oneLine(err.Error()),
		"check WAYLUME_REALTIME_URL, WAYLUME_SUPABASE_KEY and the token (waylume-node token; expired?), and that Realtime is enabled for the project")
}

func checkPublication(r migrations.Report) Result {
	const fix = "run waylume-node migrate (it adds waylume.peers and waylume.nodes to supabase_realtime with REPLICA IDENTITY FULL)"
	if r.PublicationErr != nil {
		return fail("publication", oneLine(r.PublicationErr.Error()), fix)
	}
	var names, missing []string
	for _, t := range r.Tables {
		names = append(names, t.Name)
		if !t.Published {
			missing = append(missing, t.Name+" not published")
		} else if !t.ReplicaFull {
			missing = append(missing, t.Name+" lacks REPLICA IDENTITY FULL")
		}
	}
	if len(missing) > 0 {
		return fail("publication", strings.Join(missing, ", "), fix)
	}
	return pass("publication", "supabase_realtime holds "+strings.Join(names, " and ")+" (REPLICA IDENTITY FULL)")
}
