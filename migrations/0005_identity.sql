-- Node identities without the legacy JWT secret, and revocation of one node
-- (docs/contract.md, "Roles and row level security" and "Revocation").
--
--   * A node may be a Supabase Auth user: its token has role authenticated
--     and app_metadata.node_id, which only the service role (a secret key)
--     can set. End users of the same project, whose tokens lack the claim,
--     see nothing.
--   * request.jwt.claims is trusted only in sessions of the services that
--     act for a JWT (PostgREST, Realtime): superusers and direct members of
--     waylume_jwt_proxy. Any other login could set the claims itself.
--   * waylume.revoke_node(node_id) makes every credential of a node useless
--     at once: tokens issued up to then (an iat floor), its login role
--     (disabled, sessions ended, what it owns dropped) and, where Supabase
--     Auth lives in the same database, its Auth users (banned, sessions
--     ended).

DO $$
DECLARE
	r text;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'waylume_jwt_proxy') THEN
		BEGIN
			CREATE ROLE waylume_jwt_proxy NOLOGIN;
		EXCEPTION WHEN duplicate_object OR unique_violation THEN
			NULL;
		END;
	END IF;
	-- Supabase's role for user tokens; created NOINHERIT as Supabase does
	-- so policies can name it on any PostgreSQL.
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
		BEGIN
			CREATE ROLE authenticated NOLOGIN NOINHERIT;
		EXCEPTION WHEN duplicate_object OR unique_violation THEN
			NULL;
		END;
	END IF;
	-- PostgREST connects as authenticator; Realtime as supabase_admin (a
	-- superuser, trusted anyway) or supabase_realtime_admin.
	FOREACH r IN ARRAY ARRAY['authenticator', 'supabase_realtime_admin'] LOOP
		IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)
		   AND NOT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles o ON o.oid = m.member
		                   WHERE o.rolname = r AND m.roleid = 'waylume_jwt_proxy'::regrole) THEN
			EXECUTE format('GRANT waylume_jwt_proxy TO %I', r);
		END IF;
	END LOOP;
END $$;

-- One row per revoked node: tokens issued at or before revoked_at (by iat,
-- whole seconds) no longer act for it.
CREATE TABLE IF NOT EXISTS waylume.node_revocations (
	node_id    uuid PRIMARY KEY REFERENCES waylume.nodes (id) ON DELETE CASCADE,
	revoked_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE waylume.node_revocations ENABLE ROW LEVEL SECURITY;

-- The node the current session acts for, or NULL.
--   1. A login role made by create_node_login: its mapping; claims ignored.
--   2. A session of a JWT proxy (superuser or direct member of
--      waylume_jwt_proxy) with request.jwt.claims: role waylume_node and
--      node_id, or role authenticated and app_metadata.node_id; refused
--      when the node was revoked after the token's iat.
--   3. Anything else: NULL.
CREATE OR REPLACE FUNCTION waylume.current_node_id() RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	raw    text;
	claims jsonb;
	node   uuid;
	floor_ timestamptz;
BEGIN
	-- Direct membership: pg_has_role would count superusers as members of
	-- everything.
	IF EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
	           WHERE r.rolname = session_user AND m.roleid = 'waylume_node_login'::regrole) THEN
		RETURN (SELECT node_id FROM waylume.node_credentials WHERE role_name = session_user);
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = session_user AND r.rolsuper)
	   AND NOT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
	                   WHERE r.rolname = session_user AND m.roleid = 'waylume_jwt_proxy'::regrole) THEN
		RETURN NULL;
	END IF;
	raw := nullif(current_setting('request.jwt.claims', true), '');
	IF raw IS NULL THEN
		RETURN NULL;
	END IF;
	BEGIN
		claims := raw::jsonb;
		IF jsonb_typeof(claims) <> 'object' THEN
			RETURN NULL;
		END IF;
		node := CASE claims->>'role'
			WHEN 'waylume_node' THEN (claims->>'node_id')::uuid
			WHEN 'authenticated' THEN (claims->'app_metadata'->>'node_id')::uuid
		END;
		IF node IS NULL THEN
			RETURN NULL;
		END IF;
		SELECT v.revoked_at INTO floor_ FROM waylume.node_revocations v WHERE v.node_id = node;
		IF floor_ IS NOT NULL
		   AND (jsonb_typeof(claims->'iat') IS DISTINCT FROM 'number'
		        OR (claims->>'iat')::numeric <= extract(epoch FROM floor_)) THEN
			RETURN NULL;
		END IF;
		RETURN node;
	EXCEPTION WHEN invalid_text_representation OR invalid_parameter_value OR numeric_value_out_of_range THEN
		RETURN NULL;
	END;
END $$;

-- Auth-user nodes read through Realtime (and the Data API) as
-- authenticated: their own row and their own peers, nothing else. End
-- users are authenticated too; without the claim current_node_id() is
-- NULL for them and the policies match no row.
DROP POLICY IF EXISTS node_read_self ON waylume.nodes;
CREATE POLICY node_read_self ON waylume.nodes FOR SELECT TO waylume_node, authenticated
	USING (id = (SELECT waylume.current_node_id()));
DROP POLICY IF EXISTS node_read_peers ON waylume.peers;
CREATE POLICY node_read_peers ON waylume.peers FOR SELECT TO waylume_node, authenticated
	USING (node_id = (SELECT waylume.current_node_id()));
GRANT USAGE ON SCHEMA waylume TO authenticated;
GRANT SELECT ON waylume.nodes, waylume.peers TO authenticated;
GRANT EXECUTE ON FUNCTION waylume.current_node_id() TO authenticated;

-- Ends a login role's access: no new logins, its sessions terminated,
-- everything it owns in this database (tables, functions, large objects)
-- dropped and its privileges revoked. The caller needs the role's
-- privileges for DROP OWNED and for signalling its backends: a CREATEROLE
-- caller without them takes them for the duration.
CREATE OR REPLACE FUNCTION waylume.end_login(role_name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	borrowed boolean := false;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
		RETURN;
	END IF;
	EXECUTE format('ALTER ROLE %I NOLOGIN CONNECTION LIMIT 0', role_name);
	IF NOT pg_has_role(current_user, role_name, 'USAGE') THEN
		EXECUTE format('GRANT %I TO %I', role_name, current_user);
		borrowed := true;
	END IF;
	PERFORM pg_terminate_backend(a.pid) FROM pg_stat_activity a
		WHERE a.usename = role_name AND a.pid <> pg_backend_pid();
	EXECUTE format('DROP OWNED BY %I', role_name);
	IF borrowed THEN
		EXECUTE format('REVOKE %I FROM %I', role_name, current_user);
	END IF;
END $$;

-- Node login roles get a connection limit: the node's pool (4), LISTEN,
-- and `check` or `status` beside it.
CREATE OR REPLACE FUNCTION waylume.create_node_login(node_id uuid, password text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r text := 'waylume_node_' || replace(create_node_login.node_id::text, '-', '');
BEGIN
	IF NOT EXISTS (SELECT 1 FROM waylume.nodes WHERE id = create_node_login.node_id) THEN
		RAISE EXCEPTION 'waylume.create_node_login: node % does not exist', create_node_login.node_id
			USING ERRCODE = 'foreign_key_violation';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
		EXECUTE format('CREATE ROLE %I LOGIN', r);
	END IF;
	EXECUTE format('ALTER ROLE %I LOGIN CONNECTION LIMIT 8', r);
	EXECUTE format('GRANT waylume_node, waylume_node_login TO %I', r);
	IF password IS NOT NULL THEN
		EXECUTE format('ALTER ROLE %I PASSWORD %L', r, password);
	END IF;
	INSERT INTO waylume.node_credentials (role_name, node_id) VALUES (r, create_node_login.node_id)
		ON CONFLICT (role_name) DO UPDATE SET node_id = EXCLUDED.node_id;
	RETURN r;
END $$;

-- Operator: removes a node's login role, ending its sessions and dropping
-- what it owns first (large objects would otherwise block DROP ROLE).
CREATE OR REPLACE FUNCTION waylume.drop_node_login(node_id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r text := 'waylume_node_' || replace(drop_node_login.node_id::text, '-', '');
BEGIN
	DELETE FROM waylume.node_credentials WHERE role_name = r;
	IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
		PERFORM waylume.end_login(r);
		EXECUTE format('DROP ROLE %I', r);
	END IF;
END $$;

-- Operator: revokes every credential of a node in one step and returns
-- what it did, one line each. The node keeps serving its current peers;
-- it only loses the control plane. Credentials made afterwards (node auth,
-- node login) work again.
CREATE OR REPLACE FUNCTION waylume.revoke_node(node_id uuid) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r text := 'waylume_node_' || replace(revoke_node.node_id::text, '-', '');
	n bigint;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM waylume.nodes WHERE id = revoke_node.node_id) THEN
		RAISE EXCEPTION 'waylume.revoke_node: node % does not exist', revoke_node.node_id
			USING ERRCODE = 'foreign_key_violation';
	END IF;
	-- The floor is the wall clock, not the transaction start: a token
	-- minted while this runs is refused too.
	INSERT INTO waylume.node_revocations (node_id, revoked_at) VALUES (revoke_node.node_id, clock_timestamp())
		ON CONFLICT ON CONSTRAINT node_revocations_pkey DO UPDATE SET revoked_at = EXCLUDED.revoked_at;
	RETURN NEXT 'tokens issued up to now refused';
	DELETE FROM waylume.node_credentials c WHERE c.node_id = revoke_node.node_id;
	IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
		PERFORM waylume.end_login(r);
		RETURN NEXT 'login role ' || r || ' disabled, sessions ended, owned objects dropped';
	END IF;
	IF to_regclass('auth.users') IS NOT NULL THEN
		BEGIN
			EXECUTE $q$UPDATE auth.users SET banned_until = now() + interval '100 years'
				WHERE raw_app_meta_data->>'node_id' = $1$q$ USING revoke_node.node_id::text;
			GET DIAGNOSTICS n = ROW_COUNT;
			EXECUTE $q$DELETE FROM auth.sessions WHERE user_id IN
				(SELECT id FROM auth.users WHERE raw_app_meta_data->>'node_id' = $1)$q$ USING revoke_node.node_id::text;
			RETURN NEXT n || ' Auth user(s) banned, sessions ended';
		EXCEPTION WHEN insufficient_privilege OR undefined_table OR undefined_column THEN
			RETURN NEXT 'Auth users not banned here (' || SQLERRM || '): use waylume-node node revoke with a secret key';
		END;
	END IF;
END $$;

REVOKE ALL ON FUNCTION waylume.end_login(text), waylume.revoke_node(uuid),
	waylume.create_node_login(uuid, text), waylume.drop_node_login(uuid) FROM PUBLIC;

DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
		GRANT SELECT ON waylume.node_revocations TO service_role;
	END IF;
END $$;

INSERT INTO waylume.schema_migrations (version) VALUES ('0005_identity') ON CONFLICT DO NOTHING;
