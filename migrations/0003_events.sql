-- Change events for nodes: the Supabase Realtime publication and the
-- LISTEN/NOTIFY channel per node.

-- Realtime decodes full old rows and filters DELETEs on node_id only with
-- REPLICA IDENTITY FULL.
ALTER TABLE waylume.peers REPLICA IDENTITY FULL;
ALTER TABLE waylume.nodes REPLICA IDENTITY FULL;

-- supabase_realtime already exists in Supabase projects, sometimes FOR ALL
-- TABLES (which also publishes peer_status and peer_usage; nothing can
-- exclude them there). Add only what is missing.
DO $$
DECLARE
	t text;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime') THEN
		CREATE PUBLICATION supabase_realtime;
	END IF;
	IF (SELECT puballtables FROM pg_publication WHERE pubname = 'supabase_realtime') THEN
		RETURN;
	END IF;
	FOREACH t IN ARRAY ARRAY['peers', 'nodes'] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_publication_tables
		               WHERE pubname = 'supabase_realtime' AND schemaname = 'waylume' AND tablename = t) THEN
			EXECUTE format('ALTER PUBLICATION supabase_realtime ADD TABLE waylume.%I', t);
		END IF;
	END LOOP;
END $$;

-- The NOTIFY channel of a node: LISTEN "waylume_node_<node uuid>".
CREATE OR REPLACE FUNCTION waylume.node_channel(node_id uuid) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'waylume_node_' || node_id::text $$;

CREATE OR REPLACE FUNCTION waylume.notify_node(p_channel_node uuid, p_table text, p_op text, p_id uuid, p_node uuid)
RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_notify(waylume.node_channel(p_channel_node),
		json_build_object('table', p_table, 'op', p_op, 'id', p_id, 'node_id', p_node)::text)
$$;

-- Payload {"table":"peers","op":"INSERT|UPDATE|DELETE","id":<peer>,"node_id":<node>}:
-- only keys, never row contents (payloads are capped at 8000 bytes and
-- rows carry secrets). A peer moved from node A to B notifies both
-- channels with op UPDATE and node_id B: on A's channel a node_id other
-- than A means the peer left.
CREATE OR REPLACE FUNCTION waylume.peers_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'DELETE' THEN
		PERFORM waylume.notify_node(OLD.node_id, 'peers', TG_OP, OLD.id, OLD.node_id);
		RETURN NULL;
	END IF;
	PERFORM waylume.notify_node(NEW.node_id, 'peers', TG_OP, NEW.id, NEW.node_id);
	IF TG_OP = 'UPDATE' AND OLD.node_id <> NEW.node_id THEN
		PERFORM waylume.notify_node(OLD.node_id, 'peers', TG_OP, NEW.id, NEW.node_id);
	END IF;
	RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER peers_notify AFTER INSERT OR UPDATE OR DELETE ON waylume.peers
	FOR EACH ROW EXECUTE FUNCTION waylume.peers_notify();

-- Node rows notify only when configuration changes, not on the node's own
-- heartbeat writes.
CREATE OR REPLACE FUNCTION waylume.nodes_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	own constant text[] := ARRAY['public_key', 'status', 'last_seen_at', 'version',
	                             'peer_count', 'active_sessions', 'updated_at'];
BEGIN
	IF TG_OP = 'DELETE' THEN
		PERFORM waylume.notify_node(OLD.id, 'nodes', TG_OP, OLD.id, OLD.id);
		RETURN NULL;
	END IF;
	IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - own) = (to_jsonb(NEW) - own) THEN
		RETURN NULL;
	END IF;
	PERFORM waylume.notify_node(NEW.id, 'nodes', TG_OP, NEW.id, NEW.id);
	RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER nodes_notify AFTER INSERT OR UPDATE OR DELETE ON waylume.nodes
	FOR EACH ROW EXECUTE FUNCTION waylume.nodes_notify();

INSERT INTO waylume.schema_migrations (version) VALUES ('0003_events') ON CONFLICT DO NOTHING;
