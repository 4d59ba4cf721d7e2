-- Roles, row level security and the operator's functions (docs/contract.md, "Roles and row level security").
--
-- Nodes act as the group role waylume_node, either
--   * through Supabase Realtime or PostgREST: the service switches to the JWT's
--     role claim (SET LOCAL ROLE waylume_node) and sets request.jwt.claims;
--     the claim node_id names the node; or
--   * connecting directly with a per-node login role made by
--     waylume.create_node_login(), a member of waylume_node and of
--     waylume_node_login; waylume.node_credentials maps it to its node.
-- Table owners (the migrating role) and BYPASSRLS roles such as Supabase's
-- service_role are the admin path; app backends use it.

DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['waylume_node', 'waylume_node_login'] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			BEGIN
				EXECUTE format('CREATE ROLE %I NOLOGIN', r);
			EXCEPTION WHEN duplicate_object OR unique_violation THEN
				NULL; -- created concurrently (roles are cluster-wide)
			END;
		END IF;
	END LOOP;
	-- PostgREST (and Realtime on some versions) connect as authenticator
	-- and may switch only to roles granted to it.
	IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator')
	   AND NOT pg_has_role('authenticator', 'waylume_node', 'MEMBER') THEN
		GRANT waylume_node TO authenticator;
	END IF;
END $$;

CREATE TABLE IF NOT EXISTS waylume.node_credentials (
	role_name  text PRIMARY KEY,
	node_id    uuid NOT NULL REFERENCES waylume.nodes (id) ON DELETE CASCADE,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS node_credentials_node_idx ON waylume.node_credentials (node_id);

-- The node the current session acts for, or NULL. Login roles made by
-- create_node_login map through node_credentials and never trust claims
-- (they could set request.jwt.claims themselves); other sessions use the
-- node_id claim when the role claim is waylume_node, as Realtime and
-- PostgREST set it: set_config('request.jwt.claims', <json>, true) and
-- SET LOCAL ROLE waylume_node. Policies call it as (SELECT ...) so it runs
-- once per statement.
CREATE OR REPLACE FUNCTION waylume.current_node_id() RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	raw    text;
	claims jsonb;
BEGIN
	-- Direct membership: pg_has_role would count superusers (as Realtime
	-- connects) as members of everything.
	IF EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
	           WHERE r.rolname = session_user AND m.roleid = 'waylume_node_login'::regrole) THEN
		RETURN (SELECT node_id FROM waylume.node_credentials WHERE role_name = session_user);
	END IF;
	raw := nullif(current_setting('request.jwt.claims', true), '');
	IF raw IS NULL THEN
		RETURN NULL;
	END IF;
	BEGIN
		claims := raw::jsonb;
		IF claims->>'role' = 'waylume_node' THEN
			RETURN (claims->>'node_id')::uuid;
		END IF;
	EXCEPTION WHEN invalid_text_representation OR invalid_parameter_value THEN
		RETURN NULL;
	END;
	RETURN NULL;
END $$;

ALTER TABLE waylume.nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE waylume.peers ENABLE ROW LEVEL SECURITY;
ALTER TABLE waylume.peer_status ENABLE ROW LEVEL SECURITY;
ALTER TABLE waylume.peer_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE waylume.node_credentials ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS node_read_self ON waylume.nodes;
CREATE POLICY node_read_self ON waylume.nodes FOR SELECT TO waylume_node
	USING (id = (SELECT waylume.current_node_id()));
DROP POLICY IF EXISTS node_update_self ON waylume.nodes;
CREATE POLICY node_update_self ON waylume.nodes FOR UPDATE TO waylume_node
	USING (id = (SELECT waylume.current_node_id()))
	WITH CHECK (id = (SELECT waylume.current_node_id()));

DROP POLICY IF EXISTS node_read_peers ON waylume.peers;
CREATE POLICY node_read_peers ON waylume.peers FOR SELECT TO waylume_node
	USING (node_id = (SELECT waylume.current_node_id()));

-- peer_status references (peer_id, node_id) of peers, so a row whose
-- node_id is the node's own is about one of its peers.
DROP POLICY IF EXISTS node_read_status ON waylume.peer_status;
CREATE POLICY node_read_status ON waylume.peer_status FOR SELECT TO waylume_node
	USING (node_id = (SELECT waylume.current_node_id()));
DROP POLICY IF EXISTS node_insert_status ON waylume.peer_status;
CREATE POLICY node_insert_status ON waylume.peer_status FOR INSERT TO waylume_node
	WITH CHECK (node_id = (SELECT waylume.current_node_id()));
DROP POLICY IF EXISTS node_update_status ON waylume.peer_status;
CREATE POLICY node_update_status ON waylume.peer_status FOR UPDATE TO waylume_node
	USING (node_id = (SELECT waylume.current_node_id()))
	WITH CHECK (node_id = (SELECT waylume.current_node_id()));

-- Usage may name a peer that is the node's own or already deleted (a last
-- delta after the delete), never another node's current peer. Checked once
-- per statement over the inserted rows (a per-row policy function cost
-- ~40 us a row), for sessions acting as a node. The node's own peers are
-- taken out set-wise first (EXCEPT: hashed, never one index probe per
-- row); only the rest, normally none, are looked up by id.
CREATE OR REPLACE FUNCTION waylume.peer_usage_check_peers() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	node uuid := waylume.current_node_id();
	bad  uuid;
BEGIN
	IF node IS NULL THEN
		RETURN NULL;
	END IF;
	SELECT p.id INTO bad
	FROM (SELECT n.node_id, n.peer_id FROM new_rows n
	      EXCEPT SELECT o.node_id, o.id FROM waylume.peers o WHERE o.node_id = node) n
	JOIN waylume.peers p ON p.id = n.peer_id AND p.node_id <> n.node_id
	LIMIT 1;
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'waylume.peer_usage: peer % belongs to another node', bad
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER peer_usage_check_peers AFTER INSERT ON waylume.peer_usage
	REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION waylume.peer_usage_check_peers();

-- The subset of peer ids p_peers that belong to nodes other than p_node:
-- writers drop their usage instead of failing the batch. Same shape as the
-- check above: p_node's own peers are removed by a hashed EXCEPT, the
-- remainder is looked up by id.
CREATE OR REPLACE FUNCTION waylume.foreign_peers(p_node uuid, p_peers uuid[]) RETURNS uuid[]
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(array_agg(p.id), '{}') FROM waylume.peers p
	WHERE p.id IN (SELECT x FROM unnest(p_peers) x EXCEPT SELECT o.id FROM waylume.peers o WHERE o.node_id = p_node)
	  AND p.node_id <> p_node
$$;

DROP POLICY IF EXISTS node_read_usage ON waylume.peer_usage;
CREATE POLICY node_read_usage ON waylume.peer_usage FOR SELECT TO waylume_node
	USING (node_id = (SELECT waylume.current_node_id()));
DROP POLICY IF EXISTS node_insert_usage ON waylume.peer_usage;
CREATE POLICY node_insert_usage ON waylume.peer_usage FOR INSERT TO waylume_node
	WITH CHECK (node_id = (SELECT waylume.current_node_id()));

REVOKE ALL ON ALL TABLES IN SCHEMA waylume FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA waylume FROM PUBLIC;
GRANT USAGE ON SCHEMA waylume TO waylume_node;
GRANT SELECT ON waylume.nodes, waylume.peers TO waylume_node;
-- Lets `waylume-node check` verify the schema version with node credentials.
GRANT SELECT ON waylume.schema_migrations TO waylume_node;
GRANT UPDATE (public_key, status, last_seen_at, version, peer_count, active_sessions) ON waylume.nodes TO waylume_node;
GRANT SELECT, INSERT ON waylume.peer_status TO waylume_node;
-- updated_at: whatever a writer sets, the touch trigger makes it now();
-- setting now() itself spares the trigger call per row.
GRANT UPDATE (state, reason, last_handshake_at, endpoint, upload_bytes, download_bytes,
              rx_baseline, tx_baseline, counter_epoch, applied_at, updated_at) ON waylume.peer_status TO waylume_node;
GRANT SELECT, INSERT ON waylume.peer_usage TO waylume_node;
GRANT EXECUTE ON FUNCTION waylume.current_node_id(), waylume.foreign_peers(uuid, uuid[]) TO waylume_node;
-- Pure helpers; CHECK constraints call the first two as the writing role.
GRANT EXECUTE ON FUNCTION waylume.is_wg_key(text), waylume.are_host_addresses(inet[]),
	waylume.host_only(inet), waylume.node_channel(uuid) TO PUBLIC;

-- Operator: creates a node and returns its id.
CREATE OR REPLACE FUNCTION waylume.create_node(
	name text, endpoint text, address inet,
	address6 inet DEFAULT NULL, listen_port int DEFAULT 51820,
	dns inet[] DEFAULT '{}', mtu int DEFAULT NULL)
RETURNS uuid
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO waylume.nodes (name, endpoint, address, address6, listen_port, dns, mtu)
	VALUES (create_node.name, create_node.endpoint, create_node.address, create_node.address6,
	        create_node.listen_port, coalesce(create_node.dns, '{}'), create_node.mtu)
	RETURNING id
$$;

-- Operator: creates (or updates) the login role waylume_node_<hex id> a node
-- uses for direct connections and returns its name. With password NULL the
-- role gets none: set it with psql's \password so the plain text never
-- reaches the server's statement log. Needs CREATEROLE.
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
	EXECUTE format('GRANT waylume_node, waylume_node_login TO %I', r);
	IF password IS NOT NULL THEN
		EXECUTE format('ALTER ROLE %I PASSWORD %L', r, password);
	END IF;
	INSERT INTO waylume.node_credentials (role_name, node_id) VALUES (r, create_node_login.node_id)
		ON CONFLICT (role_name) DO UPDATE SET node_id = EXCLUDED.node_id;
	RETURN r;
END $$;

-- Operator: removes a node's login role.
CREATE OR REPLACE FUNCTION waylume.drop_node_login(node_id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r text := 'waylume_node_' || replace(drop_node_login.node_id::text, '-', '');
BEGIN
	DELETE FROM waylume.node_credentials WHERE role_name = r;
	IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
		EXECUTE format('DROP ROLE %I', r);
	END IF;
END $$;

REVOKE ALL ON FUNCTION waylume.create_node(text, text, inet, inet, int, inet[], int),
	waylume.create_node_login(uuid, text), waylume.drop_node_login(uuid) FROM PUBLIC;

-- Supabase: the service role (BYPASSRLS) is the app backends' admin path.
DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
		GRANT USAGE ON SCHEMA waylume TO service_role;
		GRANT SELECT, INSERT, UPDATE, DELETE ON waylume.nodes, waylume.peers,
			waylume.peer_status, waylume.peer_usage TO service_role;
		GRANT SELECT ON waylume.node_credentials, waylume.schema_migrations TO service_role;
		GRANT EXECUTE ON FUNCTION waylume.create_node(text, text, inet, inet, int, inet[], int),
			waylume.current_node_id(), waylume.node_channel(uuid) TO service_role;
	END IF;
END $$;

INSERT INTO waylume.schema_migrations (version) VALUES ('0004_access') ON CONFLICT DO NOTHING;
