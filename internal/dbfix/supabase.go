package dbfix

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/waylume/waylume-node/internal/pgtest"
)

// supabaseRoles are the cluster-wide roles of a Supabase project besides
// those of SupabaseRoles: the Data API's login and the two JWT roles, and
// the owner of the realtime schema.
const supabaseRoles = `DO $$ BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN CREATE ROLE authenticator LOGIN NOINHERIT; END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'supabase_realtime_admin') THEN CREATE ROLE supabase_realtime_admin NOLOGIN; END IF;
	END $$;
	GRANT anon, authenticated, service_role TO authenticator;
	GRANT anon, authenticated, service_role, supabase_realtime_admin TO realtime_admin`

// realtimeSchema is a stand-in for what Supabase installs in every
// project, as its documentation describes it: auth.jwt(), and schema
// realtime with messages (partitioned by day on Supabase; one default
// partition here), topic() and send(), which never raises. RLS is on and
// no policy exists, so nobody but the owner reads a topic until a
// migration says who may.
const realtimeSchema = `
CREATE SCHEMA IF NOT EXISTS auth;
CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
	SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
	                nullif(current_setting('request.jwt.claims', true), ''))::jsonb $$;
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
	SELECT nullif(auth.jwt()->>'sub', '')::uuid $$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;

CREATE SCHEMA IF NOT EXISTS realtime AUTHORIZATION supabase_realtime_admin;
CREATE TABLE IF NOT EXISTS realtime.messages (
	topic       text NOT NULL,
	extension   text NOT NULL,
	payload     jsonb,
	event       text,
	private     boolean DEFAULT false,
	updated_at  timestamp NOT NULL DEFAULT now(),
	inserted_at timestamp NOT NULL DEFAULT now(),
	id          uuid NOT NULL DEFAULT gen_random_uuid(),
	PRIMARY KEY (id, inserted_at)
) PARTITION BY RANGE (inserted_at);
CREATE TABLE IF NOT EXISTS realtime.messages_default PARTITION OF realtime.messages DEFAULT;
ALTER TABLE realtime.messages OWNER TO supabase_realtime_admin;
ALTER TABLE realtime.messages_default OWNER TO supabase_realtime_admin;
ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;

CREATE OR REPLACE FUNCTION realtime.topic() RETURNS text LANGUAGE sql STABLE AS $$
	SELECT nullif(current_setting('realtime.topic', true), '')::text $$;

CREATE OR REPLACE FUNCTION realtime.send(payload jsonb, event text, topic text, private boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	BEGIN
		PERFORM set_config('realtime.topic', topic, true);
		INSERT INTO realtime.messages (payload, event, topic, private, extension)
		VALUES (payload, event, topic, private, 'broadcast');
	EXCEPTION WHEN OTHERS THEN
		RAISE WARNING 'ErrorSendingBroadcastMessage: %', SQLERRM;
	END;
END $$;
ALTER FUNCTION realtime.topic() OWNER TO supabase_realtime_admin;
ALTER FUNCTION realtime.send(jsonb, text, text, boolean) OWNER TO supabase_realtime_admin;

GRANT USAGE ON SCHEMA realtime TO anon, authenticated, service_role;
GRANT SELECT, INSERT ON realtime.messages TO anon, authenticated, service_role;
`

// SupabaseRealtime installs, in db, the roles and stand-ins a Supabase
// project has before the migrations run (see realtimeSchema). Call it
// after SupabaseRoles and before migrating; MigratedSupabase does both.
func SupabaseRealtime(t testing.TB, db *pgtest.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatalf("dbfix: connect: %v", err)
	}
	defer conn.Close(ctx)
	migrateMu.Lock()
	_, err = conn.Exec(ctx, supabaseRoles)
	migrateMu.Unlock()
	if err != nil {
		t.Fatalf("dbfix: supabase roles: %v", err)
	}
	if _, err := conn.Exec(ctx, realtimeSchema); err != nil {
		t.Fatalf("dbfix: realtime schema: %v", err)
	}
}
