-- Peer address allocation and pool validation.
--
-- Inserting a peer with a NULL address (or address6, when the node has an
-- IPv6 pool) gets the lowest free host address of the node's pool. The pool
-- is never scanned: per node and family a state row holds a high-water mark
-- `next`, and address_free holds every free address below it. Allocation
-- takes min(address_free) through its primary key, else advances `next`
-- past addresses already taken explicitly; freeing below `next` adds to the
-- free list. Both cost O(log n) in the peers of the node.
--
-- Every change of a node's allocation state locks its state row (FOR
-- UPDATE): concurrent inserts on one node serialize for the duration of
-- their transactions; different nodes do not contend.

CREATE TABLE IF NOT EXISTS waylume.address_pools (
	node_id uuid NOT NULL REFERENCES waylume.nodes (id) ON DELETE CASCADE,
	family  smallint NOT NULL CHECK (family IN (4, 6)),
	pool    cidr NOT NULL,
	next    inet NOT NULL,
	PRIMARY KEY (node_id, family)
);

-- No foreign key: rows are written from peer triggers while a node's
-- cascade delete is in progress; nodes_forget_pool cleans up instead.
CREATE TABLE IF NOT EXISTS waylume.address_free (
	node_id uuid NOT NULL,
	address inet NOT NULL,
	PRIMARY KEY (node_id, address)
);

ALTER TABLE waylume.address_pools ENABLE ROW LEVEL SECURITY;
ALTER TABLE waylume.address_free ENABLE ROW LEVEL SECURITY;

-- The host address of an inet as a single-address inet (/32 or /128).
CREATE OR REPLACE FUNCTION waylume.host_only(a inet) RETURNS inet
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT set_masklen(a, CASE family(a) WHEN 4 THEN 32 ELSE 128 END) $$;

-- Allocation state is cached for the rest of the transaction in a local
-- setting "waylume.alloc_<node hex>_<family>" = "<pool>|<next>": updating
-- the state row once per allocation would leave a chain of row versions
-- that every later lookup in the same transaction walks (quadratic in bulk
-- inserts). A statement-level trigger writes dirty state back
-- (waylume.flush_address_pools); the row lock taken first stays held until
-- the transaction ends, so the cache cannot go stale.
CREATE OR REPLACE FUNCTION waylume.address_pool_key(p_node uuid, p_family int) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'waylume.alloc_' || replace(p_node::text, '-', '') || '_' || p_family $$;

-- Locks (creating it when absent) the allocation state of node p_node for
-- the family of p_pool, the node's address with its pool prefix, and
-- returns it. A changed pool restarts the state: the free list is dropped
-- and `next` starts over.
CREATE OR REPLACE FUNCTION waylume.lock_address_pool(p_node uuid, p_pool inet)
RETURNS waylume.address_pools
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	st     waylume.address_pools;
	v_fam  smallint := family(p_pool);
	v_net  cidr := network(p_pool);
	v_lo   inet := waylume.host_only(network(p_pool)) + 1;
	v_key  text := waylume.address_pool_key(p_node, family(p_pool));
	cached text := nullif(current_setting(v_key, true), '');
BEGIN
	IF cached IS NOT NULL AND split_part(cached, '|', 1)::cidr = v_net THEN
		RETURN ROW(p_node, v_fam, v_net, split_part(cached, '|', 2)::inet)::waylume.address_pools;
	END IF;
	SELECT * INTO st FROM waylume.address_pools WHERE node_id = p_node AND family = v_fam FOR UPDATE;
	IF NOT FOUND THEN
		INSERT INTO waylume.address_pools (node_id, family, pool, next)
			VALUES (p_node, v_fam, v_net, v_lo) ON CONFLICT DO NOTHING;
		SELECT * INTO STRICT st FROM waylume.address_pools WHERE node_id = p_node AND family = v_fam FOR UPDATE;
	END IF;
	IF st.pool <> v_net THEN
		DELETE FROM waylume.address_free WHERE node_id = p_node AND family(address) = v_fam;
		UPDATE waylume.address_pools SET pool = v_net, next = v_lo
			WHERE node_id = p_node AND family = v_fam RETURNING * INTO st;
	END IF;
	PERFORM set_config(v_key, st.pool::text || '|' || st.next::text, true);
	RETURN st;
END $$;

-- Moves the high-water mark of a locked state (cached; written back by
-- flush_address_pools at the end of the statement).
CREATE OR REPLACE FUNCTION waylume.set_address_pool_next(st waylume.address_pools, p_next inet) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_key text := waylume.address_pool_key(st.node_id, st.family);
	dirty text := coalesce(current_setting('waylume.alloc_dirty', true), '');
BEGIN
	PERFORM set_config(v_key, st.pool::text || '|' || p_next::text, true);
	IF NOT v_key = ANY (string_to_array(dirty, ',')) THEN
		PERFORM set_config('waylume.alloc_dirty', concat_ws(',', nullif(dirty, ''), v_key), true);
	END IF;
END $$;

CREATE OR REPLACE FUNCTION waylume.flush_address_pools() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
	v text;
BEGIN
	FOREACH k IN ARRAY coalesce(string_to_array(nullif(current_setting('waylume.alloc_dirty', true), ''), ','), '{}') LOOP
		v := current_setting(k, true);
		UPDATE waylume.address_pools SET next = split_part(v, '|', 2)::inet
		WHERE node_id = substr(k, 15, 32)::uuid AND family = split_part(k, '_', 3)::smallint
		  AND pool = split_part(v, '|', 1)::cidr;
	END LOOP;
	PERFORM set_config('waylume.alloc_dirty', '', true);
	RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION waylume.address_taken(p_node uuid, a inet) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE family(a)
		WHEN 4 THEN EXISTS (SELECT 1 FROM waylume.peers WHERE node_id = p_node AND address = a)
		ELSE EXISTS (SELECT 1 FROM waylume.peers WHERE node_id = p_node AND address6 = a)
	END
$$;

-- Returns the lowest free host address of pool p_pool (the node's address
-- with prefix) for node p_node, excluding the network address, the last
-- address (broadcast in IPv4) and the node's own address.
CREATE OR REPLACE FUNCTION waylume.allocate_address(p_node uuid, p_pool inet) RETURNS inet
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	st    waylume.address_pools;
	v_own inet := waylume.host_only(p_pool);
	v_net inet := waylume.host_only(network(p_pool));
	v_hi  inet := waylume.host_only(broadcast(p_pool)) - 1;
	a     inet;
	reclaimed boolean := false;
BEGIN
	st := waylume.lock_address_pool(p_node, p_pool);
	LOOP
		DELETE FROM waylume.address_free f
		WHERE f.node_id = p_node AND f.address = (
			SELECT min(address) FROM waylume.address_free
			WHERE node_id = p_node AND address > v_net AND address < st.next)
		RETURNING f.address INTO a;
		EXIT WHEN a IS NULL;
		IF a <> v_own AND NOT waylume.address_taken(p_node, a) THEN
			RETURN a;
		END IF;
	END LOOP;
	a := st.next;
	LOOP
		IF a > v_hi AND NOT reclaimed THEN
			-- Before calling the pool full, take back addresses that were
			-- allocated for rows never stored (INSERT ... ON CONFLICT DO
			-- NOTHING runs this trigger for rows it then skips).
			reclaimed := true;
			IF waylume.reclaim_addresses(p_node, p_pool, st.next) > 0 THEN
				RETURN waylume.allocate_address(p_node, p_pool);
			END IF;
		END IF;
		IF a > v_hi THEN
			RAISE EXCEPTION 'waylume: address pool % of node % is full', network(p_pool), p_node
				USING ERRCODE = 'configuration_limit_exceeded',
				HINT = 'delete peers of this node or give the node a larger pool';
		END IF;
		EXIT WHEN a <> v_own AND NOT waylume.address_taken(p_node, a);
		a := a + 1;
	END LOOP;
	PERFORM waylume.set_address_pool_next(st, a + 1);
	RETURN a;
END $$;

-- Puts every host address below p_next that no peer holds (other than the
-- node's own) on the free list and returns how many were missing from it.
-- O(peers of the node): run only when the pool looks full.
CREATE OR REPLACE FUNCTION waylume.reclaim_addresses(p_node uuid, p_pool inet, p_next inet) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_own inet := waylume.host_only(p_pool);
	v_net inet := waylume.host_only(network(p_pool));
	n     bigint;
BEGIN
	WITH used AS (
		SELECT CASE family(p_pool) WHEN 4 THEN address ELSE address6 END AS a
		FROM waylume.peers WHERE node_id = p_node
	), bounds AS (
		SELECT a, lag(a, 1, v_net) OVER (ORDER BY a) AS prev
		FROM (SELECT a FROM used WHERE a > v_net AND a < p_next UNION ALL SELECT p_next) x
	), ins AS (
		INSERT INTO waylume.address_free (node_id, address)
		SELECT p_node, b.prev + i
		FROM bounds b, generate_series(1, b.a - b.prev - 1) i
		WHERE b.a - b.prev > 1 AND b.prev + i <> v_own
		ON CONFLICT DO NOTHING
		RETURNING 1
	)
	SELECT count(*) INTO n FROM ins;
	RETURN n;
END $$;

-- Records that host address a of pool p_pool was taken explicitly.
CREATE OR REPLACE FUNCTION waylume.take_address(p_node uuid, p_pool inet, a inet) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	st waylume.address_pools;
BEGIN
	st := waylume.lock_address_pool(p_node, p_pool);
	IF a < st.next THEN
		DELETE FROM waylume.address_free WHERE node_id = p_node AND address = a;
	ELSIF a = st.next THEN
		PERFORM waylume.set_address_pool_next(st, a + 1);
	END IF;
END $$;

-- Returns host address a to node p_node's pool of its family, if the node
-- still exists and a lies in its current pool.
CREATE OR REPLACE FUNCTION waylume.release_address(p_node uuid, a inet) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_pool inet;
	st     waylume.address_pools;
BEGIN
	SELECT CASE family(a) WHEN 4 THEN address ELSE address6 END INTO v_pool
		FROM waylume.nodes WHERE id = p_node;
	IF v_pool IS NULL OR NOT a << network(v_pool) THEN
		RETURN;
	END IF;
	st := waylume.lock_address_pool(p_node, v_pool);
	IF a < st.next AND a > waylume.host_only(network(v_pool)) THEN
		INSERT INTO waylume.address_free (node_id, address) VALUES (p_node, a) ON CONFLICT DO NOTHING;
	END IF;
END $$;

-- Raises a check_violation unless a is a usable host address of pool p_pool.
CREATE OR REPLACE FUNCTION waylume.check_pool_address(p_col text, p_node uuid, p_pool inet, a inet) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_net inet := network(p_pool);
BEGIN
	IF NOT a << v_net THEN
		RAISE EXCEPTION 'waylume.peers: % % is outside the pool % of node %', p_col, host(a), v_net, p_node
			USING ERRCODE = 'check_violation', CONSTRAINT = 'peers_' || p_col || '_in_pool';
	END IF;
	IF host(a) = host(p_pool) THEN
		RAISE EXCEPTION 'waylume.peers: % % is the address of node %', p_col, host(a), p_node
			USING ERRCODE = 'check_violation', CONSTRAINT = 'peers_' || p_col || '_in_pool';
	END IF;
	IF host(a) IN (host(v_net), host(broadcast(v_net))) THEN
		RAISE EXCEPTION 'waylume.peers: % % is the network or broadcast address of pool %', p_col, host(a), v_net
			USING ERRCODE = 'check_violation', CONSTRAINT = 'peers_' || p_col || '_in_pool';
	END IF;
END $$;

CREATE INDEX IF NOT EXISTS peers_routed_idx ON waylume.peers (node_id) WHERE cardinality(allowed_ips) > 0;

-- BEFORE INSERT/UPDATE on peers: allocate NULL addresses, validate
-- addresses against the node's pools, keep the allocation state in step.
-- SECURITY DEFINER: app roles need no rights on the allocator's tables.
CREATE OR REPLACE FUNCTION waylume.peers_assign_address() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n     record;
	moved boolean := false;
	other uuid;
BEGIN
	IF TG_OP = 'UPDATE' THEN
		moved := NEW.node_id <> OLD.node_id;
		-- A moved peer keeps no address it was not explicitly given:
		-- it gets one of its new node's pool.
		IF moved AND NEW.address IS NOT DISTINCT FROM OLD.address THEN
			NEW.address := NULL;
		END IF;
		IF moved AND NEW.address6 IS NOT DISTINCT FROM OLD.address6 THEN
			NEW.address6 := NULL;
		END IF;
	END IF;

	SELECT address, address6 INTO n FROM waylume.nodes WHERE id = NEW.node_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'waylume.peers: node % does not exist', NEW.node_id
			USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'peers_node_id_fkey';
	END IF;

	IF NEW.address IS NULL THEN
		NEW.address := waylume.allocate_address(NEW.node_id, n.address);
	ELSE
		IF family(NEW.address) <> 4 THEN
			RAISE EXCEPTION 'waylume.peers: address % is not IPv4', NEW.address
				USING ERRCODE = 'check_violation', CONSTRAINT = 'peers_address_check';
		END IF;
		NEW.address := waylume.host_only(NEW.address);
		IF TG_OP = 'INSERT' OR moved OR NEW.address <> OLD.address THEN
			PERFORM waylume.check_pool_address('address', NEW.node_id, n.address, NEW.address);
			PERFORM waylume.take_address(NEW.node_id, n.address, NEW.address);
		END IF;
	END IF;

	IF n.address6 IS NULL THEN
		IF NEW.address6 IS NOT NULL THEN
			RAISE EXCEPTION 'waylume.peers: address6 % given but node % has no IPv6 pool', NEW.address6, NEW.node_id
				USING ERRCODE = 'check_violation', CONSTRAINT = 'peers_address6_in_pool';
		END IF;
	ELSIF NEW.address6 IS NULL THEN
		NEW.address6 := waylume.allocate_address(NEW.node_id, n.address6);
	ELSE
		IF family(NEW.address6) <> 6 THEN
			RAISE EXCEPTION 'waylume.peers: address6 % is not IPv6', NEW.address6
				USING ERRCODE = 'check_violation', CONSTRAINT = 'peers_address6_check';
		END IF;
		NEW.address6 := waylume.host_only(NEW.address6);
		IF TG_OP = 'INSERT' OR moved OR NEW.address6 IS DISTINCT FROM OLD.address6 THEN
			PERFORM waylume.check_pool_address('address6', NEW.node_id, n.address6, NEW.address6);
			PERFORM waylume.take_address(NEW.node_id, n.address6, NEW.address6);
		END IF;
	END IF;

	-- IPv4-mapped IPv6 prefixes slip past the overlap checks (families
	-- differ) and mean an IPv4 route WireGuard cannot take: write IPv4.
	IF EXISTS (SELECT 1 FROM unnest(NEW.allowed_ips) x WHERE family(x) = 6 AND x <<= '::ffff:0.0.0.0/96'::cidr) THEN
		RAISE EXCEPTION 'waylume.peers: allowed_ips % hold an IPv4-mapped IPv6 prefix; write it as IPv4', NEW.allowed_ips
			USING ERRCODE = 'check_violation', CONSTRAINT = 'peers_allowed_ips_not_mapped';
	END IF;
	IF EXISTS (SELECT 1 FROM unnest(NEW.allowed_ips) x
	           WHERE x && network(n.address) OR (n.address6 IS NOT NULL AND x && network(n.address6))) THEN
		RAISE EXCEPTION 'waylume.peers: allowed_ips % overlap the pool of node %', NEW.allowed_ips, NEW.node_id
			USING ERRCODE = 'check_violation', CONSTRAINT = 'peers_allowed_ips_outside_pool';
	END IF;
	-- Routed subnets must not overlap another peer's on the node: the
	-- kernel would route them to one of the two. Only peers with routes
	-- are read (partial index peers_routed_idx).
	IF cardinality(NEW.allowed_ips) > 0
	   AND (TG_OP = 'INSERT' OR moved OR NEW.allowed_ips IS DISTINCT FROM OLD.allowed_ips) THEN
		SELECT p.id INTO other FROM waylume.peers p, unnest(p.allowed_ips) x, unnest(NEW.allowed_ips) y
		WHERE p.node_id = NEW.node_id AND p.id <> NEW.id AND cardinality(p.allowed_ips) > 0 AND x && y
		LIMIT 1;
		IF other IS NOT NULL THEN
			RAISE EXCEPTION 'waylume.peers: allowed_ips % overlap those of peer % on node %', NEW.allowed_ips, other, NEW.node_id
				USING ERRCODE = 'check_violation', CONSTRAINT = 'peers_allowed_ips_unique';
		END IF;
	END IF;
	RETURN NEW;
END $$;

-- AFTER DELETE/UPDATE on peers: give addresses no longer used back.
CREATE OR REPLACE FUNCTION waylume.peers_release_address() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'DELETE' OR OLD.node_id <> NEW.node_id OR OLD.address <> NEW.address THEN
		PERFORM waylume.release_address(OLD.node_id, OLD.address);
	END IF;
	IF OLD.address6 IS NOT NULL AND (TG_OP = 'DELETE' OR OLD.node_id <> NEW.node_id
	                                 OR OLD.address6 IS DISTINCT FROM NEW.address6) THEN
		PERFORM waylume.release_address(OLD.node_id, OLD.address6);
	END IF;
	RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER peers_assign_address
	BEFORE INSERT OR UPDATE OF node_id, address, address6, allowed_ips ON waylume.peers
	FOR EACH ROW EXECUTE FUNCTION waylume.peers_assign_address();
CREATE OR REPLACE TRIGGER peers_release_address
	AFTER DELETE OR UPDATE OF node_id, address, address6 ON waylume.peers
	FOR EACH ROW EXECUTE FUNCTION waylume.peers_release_address();
CREATE OR REPLACE TRIGGER peers_flush_address_pools
	AFTER INSERT OR UPDATE OR DELETE ON waylume.peers
	FOR EACH STATEMENT EXECUTE FUNCTION waylume.flush_address_pools();

-- A node's pool may change only when its peers stay valid in the new one.
CREATE OR REPLACE FUNCTION waylume.nodes_check_pool() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	bad inet;
BEGIN
	SELECT address INTO bad FROM waylume.peers
	WHERE node_id = NEW.id AND (NOT address << network(NEW.address)
		OR host(address) IN (host(NEW.address), host(network(NEW.address)), host(broadcast(NEW.address))))
	LIMIT 1;
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'waylume.nodes: peer address % does not fit the new pool %', host(bad), NEW.address
			USING ERRCODE = 'check_violation', CONSTRAINT = 'nodes_address_fits_peers';
	END IF;
	SELECT address6 INTO bad FROM waylume.peers
	WHERE node_id = NEW.id AND address6 IS NOT NULL AND (NEW.address6 IS NULL OR NOT address6 << network(NEW.address6)
		OR host(address6) IN (host(NEW.address6), host(network(NEW.address6)), host(broadcast(NEW.address6))))
	LIMIT 1;
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'waylume.nodes: peer address6 % does not fit the new pool %', host(bad), NEW.address6
			USING ERRCODE = 'check_violation', CONSTRAINT = 'nodes_address6_fits_peers';
	END IF;
	RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER nodes_check_pool
	BEFORE UPDATE OF address, address6 ON waylume.nodes
	FOR EACH ROW WHEN (OLD.address IS DISTINCT FROM NEW.address OR OLD.address6 IS DISTINCT FROM NEW.address6)
	EXECUTE FUNCTION waylume.nodes_check_pool();

CREATE OR REPLACE FUNCTION waylume.nodes_forget_pool() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM waylume.address_free WHERE node_id = OLD.id;
	RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER nodes_forget_pool AFTER DELETE ON waylume.nodes
	FOR EACH ROW EXECUTE FUNCTION waylume.nodes_forget_pool();

INSERT INTO waylume.schema_migrations (version) VALUES ('0002_allocator') ON CONFLICT DO NOTHING;
