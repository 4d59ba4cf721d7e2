-- Routed prefixes of one node never overlap, also under concurrent writes
-- (docs/contract.md, the allowed_ips row of peers). The overlap check of
-- peers_assign_address (0002) reads the node's other routing peers; two
-- transactions adding overlapping prefixes to one node could both read
-- before either committed, and both pass. A writer adding or moving routes
-- now takes the node's routes lock (the one peers_bound_routes takes for
-- the prefix bound) before that check: the second writer waits for the
-- first to commit, and its check then reads under a new snapshot (READ
-- COMMITTED, every statement of a trigger function takes one) and sees the
-- first's prefixes. BEFORE triggers run in name order: after peers_0_place,
-- which picks the node, before peers_assign_address.
CREATE OR REPLACE FUNCTION waylume.peers_lock_routes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF cardinality(NEW.allowed_ips) > 0 AND (TG_OP = 'INSERT' OR NEW.node_id IS DISTINCT FROM OLD.node_id
	   OR NEW.allowed_ips IS DISTINCT FROM OLD.allowed_ips) THEN
		PERFORM pg_advisory_xact_lock(hashtext('waylume.routes'), hashtext(NEW.node_id::text));
	END IF;
	RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER peers_1_lock_routes
	BEFORE INSERT OR UPDATE OF node_id, allowed_ips ON waylume.peers
	FOR EACH ROW EXECUTE FUNCTION waylume.peers_lock_routes();

REVOKE ALL ON FUNCTION waylume.peers_lock_routes() FROM PUBLIC;

INSERT INTO waylume.schema_migrations (version) VALUES ('0010_routes_lock') ON CONFLICT DO NOTHING;
