-- Fleet operation on one project: an event path no login can turn into a
-- fleet-wide write outage, a bound on routed prefixes per node, placement
-- and drain of peers, and the client's configuration file
-- (docs/contract.md).

-- NOTIFY is a hint (the node rereads rows and resyncs periodically), so it
-- must never fail the write that caused it. Notifications are queued at
-- commit in one cluster-wide 8 GB queue, held until the slowest listener
-- has read them; any login can fill it (LISTEN without reading, then
-- pg_notify), and a full queue fails every committing transaction that
-- notifies with "too many notifications in the NOTIFY queue". Past half
-- full the triggers send nothing: the write commits and the nodes pick the
-- change up at their next resync. The exception handler covers pg_notify's
-- own errors at call time; the commit-time error cannot be caught, which
-- is why the queue is checked first.
CREATE OR REPLACE FUNCTION waylume.notify_node(p_channel_node uuid, p_table text, p_op text, p_id uuid, p_node uuid)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF pg_notification_queue_usage() > 0.5 THEN
		RETURN;
	END IF;
	PERFORM pg_notify(waylume.node_channel(p_channel_node),
		json_build_object('table', p_table, 'op', p_op, 'id', p_id, 'node_id', p_node)::text);
EXCEPTION WHEN OTHERS THEN
	RETURN;
END $$;


-- Routed prefixes per node. Every prefix a node routes costs the node an
-- overlap check and a route; the node enforces the same bound and rejects
-- the row that would pass it (docs/contract.md, "Rows the node refuses").
CREATE OR REPLACE FUNCTION waylume.max_routed_prefixes() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 4096 $$;

-- BEFORE INSERT/UPDATE on peers: refuse a row that takes its node past
-- max_routed_prefixes(). Writers adding routes to one node serialise on
-- an advisory lock, so two cannot both pass the count (READ COMMITTED: the
-- count after the lock sees the other's commit). Only peers with routes
-- are read (partial index peers_routed_idx).
CREATE OR REPLACE FUNCTION waylume.peers_bound_routes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	total bigint;
BEGIN
	IF cardinality(NEW.allowed_ips) = 0 OR (TG_OP = 'UPDATE' AND NEW.node_id = OLD.node_id
	   AND cardinality(NEW.allowed_ips) <= cardinality(OLD.allowed_ips)) THEN
		RETURN NEW;
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('waylume.routes'), hashtext(NEW.node_id::text));
	SELECT coalesce(sum(cardinality(allowed_ips)), 0) + cardinality(NEW.allowed_ips) INTO total
	FROM waylume.peers WHERE node_id = NEW.node_id AND id <> NEW.id AND cardinality(allowed_ips) > 0;
	IF total > waylume.max_routed_prefixes() THEN
		RAISE EXCEPTION 'waylume.peers: node % would route % allowed_ips prefixes, at most %',
			NEW.node_id, total, waylume.max_routed_prefixes()
			USING ERRCODE = 'check_violation', CONSTRAINT = 'peers_allowed_ips_per_node',
			HINT = 'route fewer or shorter prefixes, or spread the routing peers over more nodes';
	END IF;
	RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER peers_bound_routes
	BEFORE INSERT OR UPDATE OF node_id, allowed_ips ON waylume.peers
	FOR EACH ROW EXECUTE FUNCTION waylume.peers_bound_routes();

-- Placement and drain. The operator marks a node draining (it keeps its
-- peers, gets no new ones) and may cap its peers.
ALTER TABLE waylume.nodes ADD COLUMN IF NOT EXISTS draining boolean NOT NULL DEFAULT false;
ALTER TABLE waylume.nodes ADD COLUMN IF NOT EXISTS max_peers int;
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'nodes_max_peers_check'
	               AND conrelid = 'waylume.nodes'::regclass) THEN
		ALTER TABLE waylume.nodes ADD CONSTRAINT nodes_max_peers_check CHECK (max_peers >= 0);
	END IF;
END $$;

-- Whether node p_node is online: its heartbeat is at most 2 minutes old
-- (the node writes one every 30 s) and it did not stop cleanly. The one
-- place placement reads heartbeats, through node_overview: the newer of
-- node_status and the columns a node of an earlier version writes.
CREATE OR REPLACE FUNCTION waylume.node_online(p_node uuid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce((SELECT status = 'online' AND last_seen_at > now() - interval '2 minutes'
	                 FROM waylume.node_overview WHERE id = p_node), false)
$$;

-- Placement and capacity serialise on one advisory lock held to the end
-- of the writing transaction: the next writer counts after the previous
-- one committed, so concurrent inserts spread evenly and none passes
-- max_peers.
CREATE OR REPLACE FUNCTION waylume.lock_placement() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_advisory_xact_lock(hashtext('waylume.placement'), 0) $$;

-- The node a new peer goes to: the online, not draining node under its
-- max_peers with the fewest peers (ties: the lower id). NULL: none.
-- O(peers of the eligible nodes) through the (node_id, public_key) index.
CREATE OR REPLACE FUNCTION waylume.place_peer() RETURNS uuid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
	SELECT n.id FROM waylume.nodes n
	CROSS JOIN LATERAL (SELECT count(*) AS peers FROM waylume.peers p WHERE p.node_id = n.id) c
	WHERE NOT n.draining AND waylume.node_online(n.id) AND (n.max_peers IS NULL OR c.peers < n.max_peers)
	ORDER BY c.peers, n.id
	LIMIT 1
$$;

-- BEFORE INSERT/UPDATE on peers: a NULL node_id is placed; a row written
-- to (or moved to) a node with max_peers set must fit. BEFORE triggers run
-- in name order: this one comes before peers_assign_address, which needs
-- the node.
CREATE OR REPLACE FUNCTION waylume.peers_place() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cap   int;
	peers bigint;
BEGIN
	IF NEW.node_id IS NULL THEN
		PERFORM waylume.lock_placement();
		NEW.node_id := waylume.place_peer();
		IF NEW.node_id IS NULL THEN
			RAISE EXCEPTION 'waylume.peers: no node can take a new peer'
				USING ERRCODE = 'configuration_limit_exceeded',
				HINT = 'placement needs a node online (heartbeat within 2 minutes), not draining and under max_peers';
		END IF;
		RETURN NEW;
	END IF;
	IF TG_OP = 'UPDATE' AND NEW.node_id = OLD.node_id THEN
		RETURN NEW;
	END IF;
	SELECT max_peers INTO cap FROM waylume.nodes WHERE id = NEW.node_id;
	IF cap IS NOT NULL THEN
		PERFORM waylume.lock_placement();
		SELECT count(*) INTO peers FROM waylume.peers WHERE node_id = NEW.node_id;
		IF peers >= cap THEN
			RAISE EXCEPTION 'waylume.peers: node % is full (max_peers %)', NEW.node_id, cap
				USING ERRCODE = 'configuration_limit_exceeded', CONSTRAINT = 'peers_node_max_peers',
				HINT = 'raise the node''s max_peers, or insert without node_id to place the peer';
		END IF;
	END IF;
	RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER peers_0_place
	BEFORE INSERT OR UPDATE OF node_id ON waylume.peers
	FOR EACH ROW EXECUTE FUNCTION waylume.peers_place();

-- The client's wg-quick configuration for peer p_peer: its addresses, the
-- node's DNS, MTU, public key and endpoint, a full tunnel, keepalive and
-- the preshared key. The private key never reaches the database: the
-- PrivateKey line is a placeholder the client fills in. Holds the
-- preshared key, so only the admin path may call it.
CREATE OR REPLACE FUNCTION waylume.client_config(peer_id uuid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p waylume.peers;
	n waylume.nodes;
	conf text;
BEGIN
	SELECT * INTO p FROM waylume.peers WHERE id = client_config.peer_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'waylume.client_config: no peer %', client_config.peer_id USING ERRCODE = 'no_data_found';
	END IF;
	SELECT * INTO STRICT n FROM waylume.nodes WHERE id = p.node_id;
	IF n.public_key IS NULL OR n.endpoint IS NULL THEN
		RAISE EXCEPTION 'waylume.client_config: node % has no % yet', n.name,
			CASE WHEN n.endpoint IS NULL THEN 'endpoint' ELSE 'public key' END
			USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'set the node''s endpoint; the node writes its public key when it first runs';
	END IF;
	conf := E'[Interface]\nPrivateKey = <client''s private key>\n'
		|| 'Address = ' || concat_ws(', ', host(p.address) || '/32', host(p.address6) || '/128') || E'\n'
		|| coalesce('DNS = ' || nullif(array_to_string(ARRAY(SELECT host(d) FROM unnest(n.dns) d), ', '), '') || E'\n', '')
		|| 'MTU = ' || coalesce(n.mtu, 1420) || E'\n'
		|| E'\n[Peer]\n'
		|| 'PublicKey = ' || n.public_key || E'\n'
		|| coalesce('PresharedKey = ' || p.preshared_key || E'\n', '')
		|| 'Endpoint = ' || n.endpoint || E'\n'
		|| 'AllowedIPs = ' || CASE WHEN n.address6 IS NULL THEN '0.0.0.0/0' ELSE '0.0.0.0/0, ::/0' END || E'\n'
		|| coalesce('PersistentKeepalive = ' || nullif(coalesce(p.persistent_keepalive, 25), 0) || E'\n', '');
	RETURN conf;
END $$;

REVOKE ALL ON FUNCTION waylume.max_routed_prefixes(), waylume.peers_bound_routes(), waylume.node_online(uuid),
	waylume.lock_placement(), waylume.place_peer(), waylume.peers_place(), waylume.client_config(uuid) FROM PUBLIC;
DO $$
DECLARE
	r text;
BEGIN
	-- Supabase grants new functions to its API roles by default privileges:
	-- client_config returns a secret.
	FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'waylume_node'] LOOP
		IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('REVOKE ALL ON FUNCTION waylume.client_config(uuid) FROM %I', r);
		END IF;
	END LOOP;
	IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
		GRANT EXECUTE ON FUNCTION waylume.client_config(uuid), waylume.node_online(uuid),
			waylume.max_routed_prefixes() TO service_role;
	END IF;
END $$;

INSERT INTO waylume.schema_migrations (version) VALUES ('0008_fleet') ON CONFLICT DO NOTHING;
