-- Broadcast from Database and the node's liveness off the published tables
-- (docs/contract.md, "Change channels" and "waylume.node_status";
-- docs/realtime.md, "Broadcast from Database").
--
-- Realtime checks every change of a published table against every
-- subscriber. Heartbeats therefore go to waylume.node_status, which is not
-- in supabase_realtime, and waylume.nodes keeps the operator's
-- configuration. The node's old liveness columns on waylume.nodes stay for
-- nodes of earlier versions, which still write them; waylume.node_overview
-- reads whichever of the two is newer under the old names.

CREATE TABLE IF NOT EXISTS waylume.node_status (
	node_id         uuid PRIMARY KEY REFERENCES waylume.nodes (id) ON DELETE CASCADE,
	status          text NOT NULL DEFAULT 'offline',
	last_seen_at    timestamptz,
	version         text,
	peer_count      int,
	active_sessions int,
	updated_at      timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT node_status_status_check CHECK (status IN ('online', 'offline', 'draining')),
	CONSTRAINT node_status_version_check CHECK (char_length(version) <= 64),
	CONSTRAINT node_status_counts_check CHECK (peer_count >= 0 AND active_sessions >= 0)
);

CREATE OR REPLACE TRIGGER node_status_touch BEFORE UPDATE ON waylume.node_status
	FOR EACH ROW WHEN (NEW.updated_at IS DISTINCT FROM now()) EXECUTE FUNCTION waylume.touch_updated_at();

-- A publication FOR ALL TABLES publishes node_status too; nothing can
-- exclude it there (docs/contract.md says what that costs).
ALTER TABLE waylume.node_status ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS node_read_own_status ON waylume.node_status;
CREATE POLICY node_read_own_status ON waylume.node_status FOR SELECT TO waylume_node
	USING (node_id = (SELECT waylume.current_node_id()));
DROP POLICY IF EXISTS node_insert_own_status ON waylume.node_status;
CREATE POLICY node_insert_own_status ON waylume.node_status FOR INSERT TO waylume_node
	WITH CHECK (node_id = (SELECT waylume.current_node_id()));
DROP POLICY IF EXISTS node_update_own_status ON waylume.node_status;
CREATE POLICY node_update_own_status ON waylume.node_status FOR UPDATE TO waylume_node
	USING (node_id = (SELECT waylume.current_node_id()))
	WITH CHECK (node_id = (SELECT waylume.current_node_id()));
REVOKE ALL ON waylume.node_status FROM PUBLIC;
GRANT SELECT, INSERT ON waylume.node_status TO waylume_node;
GRANT UPDATE (status, last_seen_at, version, peer_count, active_sessions, updated_at)
	ON waylume.node_status TO waylume_node;

-- The nodes with their liveness under the names waylume.nodes had: the
-- newer of node_status and the columns an older node still writes.
-- security_invoker: the reader's own RLS applies.
CREATE OR REPLACE VIEW waylume.node_overview WITH (security_invoker = true) AS
SELECT n.id, n.name, n.endpoint, n.listen_port, n.address, n.address6, n.dns, n.mtu, n.public_key,
	CASE WHEN fresh THEN s.status ELSE n.status END AS status,
	CASE WHEN fresh THEN s.last_seen_at ELSE n.last_seen_at END AS last_seen_at,
	CASE WHEN fresh THEN s.version ELSE n.version END AS version,
	CASE WHEN fresh THEN s.peer_count ELSE n.peer_count END AS peer_count,
	CASE WHEN fresh THEN s.active_sessions ELSE n.active_sessions END AS active_sessions,
	n.created_at, n.updated_at
FROM waylume.nodes n
LEFT JOIN waylume.node_status s ON s.node_id = n.id
CROSS JOIN LATERAL (SELECT s.node_id IS NOT NULL
	AND (n.last_seen_at IS NULL OR s.last_seen_at >= n.last_seen_at) AS fresh) f;
REVOKE ALL ON waylume.node_overview FROM PUBLIC;
GRANT SELECT ON waylume.node_overview TO waylume_node;

-- The Realtime topic of a node: private channel "waylume:node:<uuid>".
CREATE OR REPLACE FUNCTION waylume.node_topic(node_id uuid) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'waylume:node:' || node_id::text $$;
GRANT EXECUTE ON FUNCTION waylume.node_topic(uuid) TO PUBLIC;

-- The canary a node writes, at most once a minute, to prove its channel
-- delivers: the write comes back on its own topic like any change.
CREATE TABLE IF NOT EXISTS waylume.node_canary (
	node_id uuid PRIMARY KEY REFERENCES waylume.nodes (id) ON DELETE CASCADE,
	nonce   text NOT NULL,
	sent_at timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT node_canary_nonce_check CHECK (char_length(nonce) BETWEEN 1 AND 64)
);
ALTER TABLE waylume.node_canary ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS node_read_own_canary ON waylume.node_canary;
CREATE POLICY node_read_own_canary ON waylume.node_canary FOR SELECT TO waylume_node
	USING (node_id = (SELECT waylume.current_node_id()));
DROP POLICY IF EXISTS node_insert_own_canary ON waylume.node_canary;
CREATE POLICY node_insert_own_canary ON waylume.node_canary FOR INSERT TO waylume_node
	WITH CHECK (node_id = (SELECT waylume.current_node_id()));
DROP POLICY IF EXISTS node_update_own_canary ON waylume.node_canary;
CREATE POLICY node_update_own_canary ON waylume.node_canary FOR UPDATE TO waylume_node
	USING (node_id = (SELECT waylume.current_node_id()))
	WITH CHECK (node_id = (SELECT waylume.current_node_id()));
REVOKE ALL ON waylume.node_canary FROM PUBLIC;
GRANT SELECT, INSERT ON waylume.node_canary TO waylume_node;
GRANT UPDATE (nonce, sent_at) ON waylume.node_canary TO waylume_node;

-- postgres_changes subscribers see canaries too (the third binding).
ALTER TABLE waylume.node_canary REPLICA IDENTITY FULL;
DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime' AND NOT puballtables)
	   AND NOT EXISTS (SELECT 1 FROM pg_publication_tables
	                   WHERE pubname = 'supabase_realtime' AND schemaname = 'waylume' AND tablename = 'node_canary') THEN
		ALTER PUBLICATION supabase_realtime ADD TABLE waylume.node_canary;
	END IF;
END $$;

-- One broadcast: {"table","op","id","node_id"} (plus "nonce" for a canary)
-- on the node's private topic, the NOTIFY payload's keys and nothing else,
-- so no key or metadata ever reaches realtime.messages. realtime.send turns
-- its own failures into a WARNING; this guard does the same for anything
-- around it (realtime.send missing or changed), so a broadcast can never
-- fail the app backend's write.
CREATE OR REPLACE FUNCTION waylume.broadcast_node(p_topic_node uuid, p_event text, p_payload jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM realtime.send(p_payload, p_event, waylume.node_topic(p_topic_node), true);
EXCEPTION WHEN OTHERS THEN
	RAISE WARNING 'waylume: broadcast to node % failed: %', p_topic_node, SQLERRM;
END $$;

CREATE OR REPLACE FUNCTION waylume.peers_broadcast() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'DELETE' THEN
		PERFORM waylume.broadcast_node(OLD.node_id, 'change',
			jsonb_build_object('table', 'peers', 'op', TG_OP, 'id', OLD.id, 'node_id', OLD.node_id));
		RETURN NULL;
	END IF;
	PERFORM waylume.broadcast_node(NEW.node_id, 'change',
		jsonb_build_object('table', 'peers', 'op', TG_OP, 'id', NEW.id, 'node_id', NEW.node_id));
	IF TG_OP = 'UPDATE' AND OLD.node_id <> NEW.node_id THEN
		-- The old node hears of the move too: on its topic a node_id other
		-- than its own means the peer left.
		PERFORM waylume.broadcast_node(OLD.node_id, 'change',
			jsonb_build_object('table', 'peers', 'op', TG_OP, 'id', NEW.id, 'node_id', NEW.node_id));
	END IF;
	RETURN NULL;
END $$;

-- Node rows broadcast only when the operator's configuration changes, as
-- they notify.
CREATE OR REPLACE FUNCTION waylume.nodes_broadcast() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	own constant text[] := ARRAY['public_key', 'status', 'last_seen_at', 'version',
	                             'peer_count', 'active_sessions', 'updated_at'];
BEGIN
	IF TG_OP = 'DELETE' THEN
		PERFORM waylume.broadcast_node(OLD.id, 'change',
			jsonb_build_object('table', 'nodes', 'op', TG_OP, 'id', OLD.id, 'node_id', OLD.id));
		RETURN NULL;
	END IF;
	IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - own) = (to_jsonb(NEW) - own) THEN
		RETURN NULL;
	END IF;
	PERFORM waylume.broadcast_node(NEW.id, 'change',
		jsonb_build_object('table', 'nodes', 'op', TG_OP, 'id', NEW.id, 'node_id', NEW.id));
	RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION waylume.canary_broadcast() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM waylume.broadcast_node(NEW.node_id, 'canary',
		jsonb_build_object('table', 'node_canary', 'op', TG_OP, 'id', NEW.node_id,
		                   'node_id', NEW.node_id, 'nonce', NEW.nonce));
	RETURN NULL;
END $$;

REVOKE ALL ON FUNCTION waylume.broadcast_node(uuid, text, jsonb), waylume.peers_broadcast(),
	waylume.nodes_broadcast(), waylume.canary_broadcast() FROM PUBLIC;

-- The node a Realtime token acts for, as the realtime.messages policies
-- see it. waylume.current_node_id() decides; where it does not yet know
-- Supabase Auth users (role authenticated with app_metadata.node_id, which
-- only a secret key can set), this reads that claim the same way.
DO $$
BEGIN
	IF (SELECT prosrc FROM pg_proc WHERE oid = 'waylume.current_node_id()'::regprocedure) ~ 'app_metadata' THEN
		CREATE OR REPLACE FUNCTION waylume.realtime_node_id() RETURNS uuid
		LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
		AS 'SELECT waylume.current_node_id()';
		RETURN;
	END IF;
	CREATE OR REPLACE FUNCTION waylume.realtime_node_id() RETURNS uuid
	LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $f$
	DECLARE
		node   uuid := waylume.current_node_id();
		claims jsonb;
	BEGIN
		IF node IS NOT NULL THEN
			RETURN node;
		END IF;
		BEGIN
			claims := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
			IF claims->>'role' = 'authenticated' AND jsonb_typeof(claims->'app_metadata') = 'object' THEN
				RETURN (claims->'app_metadata'->>'node_id')::uuid;
			END IF;
		EXCEPTION WHEN invalid_text_representation OR invalid_parameter_value THEN
			RETURN NULL;
		END;
		RETURN NULL;
	END $f$;
END $$;
REVOKE ALL ON FUNCTION waylume.realtime_node_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION waylume.realtime_node_id() TO waylume_node;

-- Only where Supabase Realtime is installed: the triggers, the rights a
-- node needs on schema realtime, and the policies that let exactly that
-- node receive on its topic. Nobody is given INSERT on the topics: only
-- these triggers (as the migrating role) send.
DO $$
DECLARE
	r text;
BEGIN
	IF to_regprocedure('realtime.send(jsonb, text, text, boolean)') IS NULL
	   OR to_regclass('realtime.messages') IS NULL THEN
		RETURN;
	END IF;
	CREATE OR REPLACE TRIGGER peers_broadcast AFTER INSERT OR UPDATE OR DELETE ON waylume.peers
		FOR EACH ROW EXECUTE FUNCTION waylume.peers_broadcast();
	CREATE OR REPLACE TRIGGER nodes_broadcast AFTER INSERT OR UPDATE OR DELETE ON waylume.nodes
		FOR EACH ROW EXECUTE FUNCTION waylume.nodes_broadcast();
	CREATE OR REPLACE TRIGGER node_canary_broadcast AFTER INSERT OR UPDATE ON waylume.node_canary
		FOR EACH ROW EXECUTE FUNCTION waylume.canary_broadcast();

	GRANT USAGE ON SCHEMA realtime TO waylume_node;
	GRANT SELECT ON realtime.messages TO waylume_node;
	GRANT EXECUTE ON FUNCTION realtime.topic() TO waylume_node;
	-- Supabase enables it; a project where it is off would let every
	-- granted role read every topic.
	IF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = 'realtime.messages'::regclass) THEN
		ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;
	END IF;
	FOREACH r IN ARRAY ARRAY['waylume_node', 'authenticated'] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			CONTINUE;
		END IF;
		EXECUTE format('DROP POLICY IF EXISTS %I ON realtime.messages', 'waylume_node_receive_' || r);
		-- realtime.topic() is the channel's topic while Realtime checks a
		-- join; the row's topic must be the same, so a node's own database
		-- session reads nothing with it.
		EXECUTE format($p$CREATE POLICY %I ON realtime.messages FOR SELECT TO %I
			USING (extension = 'broadcast'
			       AND topic = realtime.topic()
			       AND topic = waylume.node_topic((SELECT waylume.realtime_node_id())))$p$,
			'waylume_node_receive_' || r, r);
		IF r = 'authenticated' THEN
			-- The policy's helpers only; no table of the schema is granted.
			GRANT USAGE ON SCHEMA waylume TO authenticated;
			GRANT EXECUTE ON FUNCTION waylume.realtime_node_id() TO authenticated;
		END IF;
	END LOOP;
END $$;

INSERT INTO waylume.schema_migrations (version) VALUES ('0006_broadcast') ON CONFLICT DO NOTHING;
