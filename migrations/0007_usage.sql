-- Usage in time buckets, written only through waylume.record_usage
-- (docs/accounting.md, docs/contract.md).
--
-- peer_usage holds one row per node, peer and bucket (default one hour,
-- waylume.usage_settings), incremented in place by every flush, so its size
-- follows the peers and the time kept, not the flush rate. A node writes
-- usage only through record_usage, which accepts a peer only if it was on
-- that node (waylume.peer_homes), never a period ending in the future, and
-- applies a flush at most once (waylume.usage_marks).

-- The nodes each peer has been on, kept after the peer is deleted or moved:
-- a node may bill the last bytes of a peer that was its own. metadata keeps
-- a deleted peer's metadata for the rollups by metadata key.
CREATE TABLE IF NOT EXISTS waylume.peer_homes (
	peer_id  uuid NOT NULL,
	node_id  uuid NOT NULL REFERENCES waylume.nodes (id) ON DELETE CASCADE,
	since    timestamptz NOT NULL DEFAULT now(),
	left_at  timestamptz,
	metadata jsonb,
	CONSTRAINT peer_homes_pkey PRIMARY KEY (peer_id, node_id)
);
CREATE INDEX IF NOT EXISTS peer_homes_node_idx ON waylume.peer_homes (node_id);

-- Statement triggers with transition tables: a bulk insert of 10,000 peers
-- costs one INSERT ... SELECT, not 10,000 trigger calls.
CREATE OR REPLACE FUNCTION waylume.peer_homes_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO waylume.peer_homes AS h (peer_id, node_id)
	SELECT n.id, n.node_id FROM new_rows n
	ON CONFLICT (peer_id, node_id) DO UPDATE SET left_at = NULL, metadata = NULL;
	RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION waylume.peer_homes_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE waylume.peer_homes h SET left_at = now()
	FROM old_rows o JOIN new_rows n ON n.id = o.id AND n.node_id <> o.node_id
	WHERE h.peer_id = o.id AND h.node_id = o.node_id;
	INSERT INTO waylume.peer_homes AS h (peer_id, node_id)
	SELECT n.id, n.node_id FROM old_rows o JOIN new_rows n ON n.id = o.id AND n.node_id <> o.node_id
	ON CONFLICT (peer_id, node_id) DO UPDATE SET left_at = NULL, metadata = NULL;
	RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION waylume.peer_homes_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE waylume.peer_homes h SET left_at = now(), metadata = o.metadata
	FROM old_rows o WHERE h.peer_id = o.id AND h.node_id = o.node_id;
	RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER peers_homes_insert AFTER INSERT ON waylume.peers
	REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION waylume.peer_homes_insert();
CREATE OR REPLACE TRIGGER peers_homes_update AFTER UPDATE ON waylume.peers
	REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION waylume.peer_homes_update();
CREATE OR REPLACE TRIGGER peers_homes_delete AFTER DELETE ON waylume.peers
	REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION waylume.peer_homes_delete();

-- One row: the width of a usage bucket. A width change applies to rows
-- written from then on; a day must be a whole number of buckets so that
-- buckets align to UTC hours and days.
CREATE TABLE IF NOT EXISTS waylume.usage_settings (
	id           boolean PRIMARY KEY DEFAULT true,
	bucket_width interval NOT NULL DEFAULT interval '1 hour',
	CONSTRAINT usage_settings_one_row CHECK (id),
	CONSTRAINT usage_settings_bucket_width_check CHECK (bucket_width BETWEEN interval '1 minute' AND interval '1 day'
		AND 86400 % extract(epoch FROM bucket_width)::bigint = 0
		AND extract(epoch FROM bucket_width) = floor(extract(epoch FROM bucket_width)))
);
INSERT INTO waylume.usage_settings (id) VALUES (true) ON CONFLICT DO NOTHING;

-- Per node: the period_end of its last applied flush. A flush is applied
-- only when its period_end is later (a retried flush whose commit was lost
-- is then a no-op), in the same transaction as its counter baselines.
CREATE TABLE IF NOT EXISTS waylume.usage_marks (
	node_id    uuid PRIMARY KEY REFERENCES waylume.nodes (id) ON DELETE CASCADE,
	flushed_to timestamptz NOT NULL
);

-- The bucketed layout. An older database keeps its rows: each (node, peer,
-- hour) of the append-only deltas becomes one bucket row.
DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM information_schema.columns
	           WHERE table_schema = 'waylume' AND table_name = 'peer_usage' AND column_name = 'bucket') THEN
		RETURN;
	END IF;
	ALTER TABLE waylume.peer_usage RENAME TO peer_usage_deltas;
	ALTER INDEX waylume.peer_usage_pkey RENAME TO peer_usage_deltas_pkey;
	ALTER INDEX waylume.peer_usage_peer_idx RENAME TO peer_usage_deltas_peer_idx;
	ALTER TABLE waylume.peer_usage_deltas RENAME CONSTRAINT peer_usage_period_check TO peer_usage_deltas_period_check;
	ALTER TABLE waylume.peer_usage_deltas RENAME CONSTRAINT peer_usage_bytes_check TO peer_usage_deltas_bytes_check;
	ALTER TABLE waylume.peer_usage_deltas RENAME CONSTRAINT peer_usage_node_id_fkey TO peer_usage_deltas_node_id_fkey;

	-- Columns ordered for alignment (no padding): about 116 bytes a row.
	-- fillfactor 50: every flush rewrites the current bucket's rows, and a
	-- page with room for a new version of each of its rows keeps that a
	-- heap-only update (no index writes; at 100 most updates were not);
	-- old buckets are never rewritten. One btree, keyed by peer first
	-- (quota sums, per-peer rollups, the writer's lookups); time ranges
	-- (retention, rollups over all peers) use a BRIN index, which costs
	-- next to nothing since buckets are appended in time order.
	CREATE TABLE waylume.peer_usage (
		node_id        uuid NOT NULL REFERENCES waylume.nodes (id),
		peer_id        uuid NOT NULL,
		bucket         timestamptz NOT NULL,
		period_start   timestamptz NOT NULL,
		period_end     timestamptz NOT NULL,
		upload_bytes   bigint NOT NULL,
		download_bytes bigint NOT NULL,
		recorded_at    timestamptz NOT NULL DEFAULT now(),
		flushes        int NOT NULL DEFAULT 1,
		CONSTRAINT peer_usage_pkey PRIMARY KEY (peer_id, bucket, node_id),
		CONSTRAINT peer_usage_period_check CHECK (period_end > period_start AND period_end >= bucket),
		CONSTRAINT peer_usage_bytes_check CHECK (upload_bytes >= 0 AND download_bytes >= 0 AND flushes >= 1)
	) WITH (fillfactor = 50);
	CREATE INDEX peer_usage_bucket_idx ON waylume.peer_usage USING brin (bucket);

	INSERT INTO waylume.peer_usage (node_id, peer_id, bucket, period_start, period_end, upload_bytes, download_bytes, recorded_at, flushes)
	SELECT node_id, peer_id, date_bin(interval '1 hour', period_end, timestamptz '2000-01-01 00:00:00+00'),
		min(period_start), max(period_end), sum(upload_bytes), sum(download_bytes), min(recorded_at), count(*)
	FROM waylume.peer_usage_deltas GROUP BY 1, 2, 3;

	-- Usage already written must stay billable by the node that wrote it.
	INSERT INTO waylume.peer_homes (peer_id, node_id, since, left_at)
	SELECT d.peer_id, d.node_id, min(d.period_start), max(d.period_end) FROM waylume.peer_usage_deltas d
	GROUP BY 1, 2
	ON CONFLICT DO NOTHING;
	INSERT INTO waylume.usage_marks (node_id, flushed_to)
	SELECT node_id, max(period_end) FROM waylume.peer_usage_deltas GROUP BY 1
	ON CONFLICT DO NOTHING;
	DROP TABLE waylume.peer_usage_deltas;
	DROP FUNCTION IF EXISTS waylume.peer_usage_check_peers();
END $$;

INSERT INTO waylume.peer_homes (peer_id, node_id, since)
SELECT id, node_id, created_at FROM waylume.peers
ON CONFLICT (peer_id, node_id) DO UPDATE SET left_at = NULL;

ALTER TABLE waylume.peer_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE waylume.peer_homes ENABLE ROW LEVEL SECURITY;
ALTER TABLE waylume.usage_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE waylume.usage_marks ENABLE ROW LEVEL SECURITY;

-- A node reads its own usage rows and writes none directly.
DROP POLICY IF EXISTS node_insert_usage ON waylume.peer_usage;
DROP POLICY IF EXISTS node_read_usage ON waylume.peer_usage;
CREATE POLICY node_read_usage ON waylume.peer_usage FOR SELECT TO waylume_node
	USING (node_id = (SELECT waylume.current_node_id()));

-- The bucket a delta ending at p_end falls in: the UTC-aligned bucket of
-- p_end, or the peer's quota reset when that lies inside it, so that the
-- bytes after a reset are in rows of their own and the quota counts them
-- exactly.
CREATE OR REPLACE FUNCTION waylume.usage_bucket(p_end timestamptz, p_width interval, p_reset timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT CASE WHEN p_reset > b AND p_reset <= p_end THEN p_reset ELSE b END
	FROM (SELECT date_bin(p_width, p_end, timestamptz '2000-01-01 00:00:00+00') AS b) x
$$;

-- Rows written directly (service role, owner) without a bucket get the
-- bucket of their period_end.
CREATE OR REPLACE FUNCTION waylume.peer_usage_default_bucket() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	NEW.bucket := waylume.usage_bucket(NEW.period_end,
		coalesce((SELECT s.bucket_width FROM waylume.usage_settings s), interval '1 hour'), NULL);
	RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER peer_usage_default_bucket BEFORE INSERT ON waylume.peer_usage
	FOR EACH ROW WHEN (NEW.bucket IS NULL) EXECUTE FUNCTION waylume.peer_usage_default_bucket();

-- Records one flush of the calling node: per peer, the bytes counted in
-- (p_start, p_end], added to the peer's bucket row. Returns false when a
-- flush with this p_end was already applied (a retry after a lost commit),
-- true when applied now. Refuses (42501) a peer that was never on the
-- node, and (23514) a period that ends more than 2 minutes ahead of the
-- database's clock or before the node's last applied flush.
CREATE OR REPLACE FUNCTION waylume.record_usage(p_start timestamptz, p_end timestamptz,
	p_peers uuid[], p_upload bigint[], p_download bigint[])
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	node  uuid := waylume.current_node_id();
	width interval;
	mark  timestamptz;
	bad   uuid;
BEGIN
	IF node IS NULL THEN
		RAISE EXCEPTION 'waylume.record_usage: the session acts for no node' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF p_end IS NULL OR p_start IS NULL OR p_end <= p_start OR p_end > now() + interval '2 minutes' THEN
		RAISE EXCEPTION 'waylume.record_usage: period (%, %] is empty or ends in the future', p_start, p_end
			USING ERRCODE = 'check_violation';
	END IF;
	IF cardinality(p_peers) IS DISTINCT FROM cardinality(p_upload) OR cardinality(p_peers) IS DISTINCT FROM cardinality(p_download)
	   OR array_position(p_peers, NULL) IS NOT NULL
	   OR EXISTS (SELECT 1 FROM unnest(p_upload, p_download) x (up, down) WHERE NOT (up >= 0 AND down >= 0)) THEN
		RAISE EXCEPTION 'waylume.record_usage: arrays of different lengths, NULLs or negative bytes'
			USING ERRCODE = 'check_violation';
	END IF;
	-- The node's own homes are taken out set-wise (hashed), never one
	-- probe per row.
	SELECT x INTO bad FROM (SELECT unnest(p_peers) EXCEPT SELECT h.peer_id FROM waylume.peer_homes h WHERE h.node_id = node) s (x) LIMIT 1;
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'waylume.record_usage: peer % was never on node %', bad, node
			USING ERRCODE = 'insufficient_privilege';
	END IF;

	-- The compare-and-set: one row per node, locked until commit, so a
	-- node's flushes apply one at a time and each at most once.
	SELECT m.flushed_to INTO mark FROM waylume.usage_marks m WHERE m.node_id = node FOR UPDATE;
	IF mark = p_end THEN
		RETURN false;
	END IF;
	IF mark > p_end THEN
		RAISE EXCEPTION 'waylume.record_usage: period end % is before the node''s last flush %', p_end, mark
			USING ERRCODE = 'check_violation';
	END IF;
	INSERT INTO waylume.usage_marks (node_id, flushed_to) VALUES (node, p_end)
	ON CONFLICT (node_id) DO UPDATE SET flushed_to = EXCLUDED.flushed_to;

	SELECT s.bucket_width INTO width FROM waylume.usage_settings s;
	width := coalesce(width, interval '1 hour');
	-- Existing bucket rows are updated (heap-only: no indexed column
	-- changes), the rest inserted; cheaper than INSERT ... ON CONFLICT,
	-- which takes the speculative insertion path for every row. One writer
	-- per node (the mark's lock), so no insert can race another.
	WITH d AS MATERIALIZED (
		SELECT x.peer_id, sum(x.up)::bigint AS up, sum(x.down)::bigint AS down,
			waylume.usage_bucket(p_end, width, min(p.quota_reset_at)) AS bucket
		FROM unnest(p_peers, p_upload, p_download) x (peer_id, up, down)
		LEFT JOIN waylume.peers p ON p.id = x.peer_id
		WHERE x.up > 0 OR x.down > 0
		GROUP BY x.peer_id
	), upd AS (
		UPDATE waylume.peer_usage u SET upload_bytes = u.upload_bytes + d.up, download_bytes = u.download_bytes + d.down,
			period_end = p_end, flushes = u.flushes + 1
		FROM d WHERE u.peer_id = d.peer_id AND u.bucket = d.bucket AND u.node_id = node
		RETURNING u.peer_id
	)
	INSERT INTO waylume.peer_usage (node_id, peer_id, bucket, period_start, period_end, upload_bytes, download_bytes)
	SELECT node, d.peer_id, d.bucket, p_start, p_end, d.up, d.down
	FROM d WHERE d.peer_id NOT IN (SELECT peer_id FROM upd);
	RETURN true;
END $$;

-- Per peer of the calling node: the bytes (upload + download) of its usage
-- on every node in rows that ended after its quota_reset_at. Reveals
-- nothing about peers that are not the node's now.
CREATE OR REPLACE FUNCTION waylume.quota_usage()
RETURNS TABLE (peer_id uuid, used_bytes bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	-- A row ending after the reset lies in a bucket starting less than a
	-- bucket width (at most a day) before it: the index bound.
	SELECT p.id, sum(u.upload_bytes + u.download_bytes)::bigint
	FROM waylume.peers p
	JOIN waylume.peer_usage u ON u.peer_id = p.id
		AND u.bucket > coalesce(p.quota_reset_at, '-infinity') - interval '1 day'
		AND u.period_end > coalesce(p.quota_reset_at, '-infinity')
	WHERE p.node_id = waylume.current_node_id()
	GROUP BY p.id
$$;

-- Rollups for app backends (service role, owner). security_invoker: the
-- caller's row level security applies, so a node sees only its own rows.
CREATE OR REPLACE VIEW waylume.peer_usage_daily WITH (security_invoker = true) AS
	SELECT peer_id, date_trunc('day', bucket, 'UTC') AS day,
		sum(upload_bytes)::bigint AS upload_bytes, sum(download_bytes)::bigint AS download_bytes
	FROM waylume.peer_usage GROUP BY 1, 2;
CREATE OR REPLACE VIEW waylume.peer_usage_monthly WITH (security_invoker = true) AS
	SELECT peer_id, date_trunc('month', bucket, 'UTC') AS month,
		sum(upload_bytes)::bigint AS upload_bytes, sum(download_bytes)::bigint AS download_bytes
	FROM waylume.peer_usage GROUP BY 1, 2;
CREATE OR REPLACE VIEW waylume.node_usage_hourly WITH (security_invoker = true) AS
	SELECT node_id, date_trunc('hour', bucket, 'UTC') AS hour, count(DISTINCT peer_id) AS peers,
		sum(upload_bytes)::bigint AS upload_bytes, sum(download_bytes)::bigint AS download_bytes
	FROM waylume.peer_usage GROUP BY 1, 2;

-- Usage in buckets starting in [p_from, p_to), per value of the peers'
-- metadata key p_key (e.g. 'user_id'); a deleted peer counts under the
-- metadata it had when it was deleted, a peer without the key under NULL.
CREATE OR REPLACE FUNCTION waylume.usage_by_metadata(p_key text, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (value text, peers bigint, upload_bytes bigint, download_bytes bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(p.metadata, h.metadata) ->> p_key, count(DISTINCT u.peer_id),
		sum(u.upload_bytes)::bigint, sum(u.download_bytes)::bigint
	FROM waylume.peer_usage u
	LEFT JOIN waylume.peers p ON p.id = u.peer_id
	LEFT JOIN LATERAL (SELECT h.metadata FROM waylume.peer_homes h
	                   WHERE h.peer_id = u.peer_id AND h.metadata IS NOT NULL
	                   ORDER BY h.left_at DESC LIMIT 1) h ON p.id IS NULL
	WHERE u.bucket >= p_from AND u.bucket < p_to
	GROUP BY 1
$$;

-- Retention: deletes the buckets that started before now() - p_keep, and
-- the homes of peers that left before then; returns the usage rows
-- deleted. At least a day is kept. On Supabase, schedule it with pg_cron:
--   SELECT cron.schedule('waylume-prune-usage', '17 3 * * *',
--     $$SELECT waylume.prune_usage(interval '13 months')$$);
CREATE OR REPLACE FUNCTION waylume.prune_usage(p_keep interval DEFAULT interval '400 days')
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	IF p_keep IS NULL OR p_keep < interval '1 day' THEN
		RAISE EXCEPTION 'waylume.prune_usage: keep at least a day, not %', p_keep USING ERRCODE = 'invalid_parameter_value';
	END IF;
	DELETE FROM waylume.peer_usage WHERE bucket < now() - p_keep;
	GET DIAGNOSTICS n = ROW_COUNT;
	DELETE FROM waylume.peer_homes WHERE left_at < now() - p_keep;
	RETURN n;
END $$;

REVOKE ALL ON waylume.peer_usage, waylume.peer_homes, waylume.usage_settings, waylume.usage_marks,
	waylume.peer_usage_daily, waylume.peer_usage_monthly, waylume.node_usage_hourly FROM PUBLIC;
REVOKE ALL ON FUNCTION waylume.record_usage(timestamptz, timestamptz, uuid[], bigint[], bigint[]),
	waylume.quota_usage(), waylume.usage_by_metadata(text, timestamptz, timestamptz),
	waylume.prune_usage(interval), waylume.peer_usage_default_bucket(), waylume.peer_homes_insert(), waylume.peer_homes_update(),
	waylume.peer_homes_delete() FROM PUBLIC;
REVOKE INSERT, UPDATE, DELETE ON waylume.peer_usage FROM waylume_node;
GRANT SELECT ON waylume.peer_usage TO waylume_node;
GRANT EXECUTE ON FUNCTION waylume.record_usage(timestamptz, timestamptz, uuid[], bigint[], bigint[]),
	waylume.quota_usage() TO waylume_node;
GRANT EXECUTE ON FUNCTION waylume.usage_bucket(timestamptz, interval, timestamptz) TO PUBLIC;

DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
		GRANT SELECT, INSERT, UPDATE, DELETE ON waylume.peer_usage TO service_role;
		GRANT SELECT ON waylume.peer_homes, waylume.usage_marks, waylume.peer_usage_daily,
			waylume.peer_usage_monthly, waylume.node_usage_hourly TO service_role;
		GRANT SELECT, UPDATE ON waylume.usage_settings TO service_role;
		GRANT EXECUTE ON FUNCTION waylume.usage_by_metadata(text, timestamptz, timestamptz),
			waylume.prune_usage(interval) TO service_role;
	END IF;
END $$;

INSERT INTO waylume.schema_migrations (version) VALUES ('0007_usage') ON CONFLICT DO NOTHING;
