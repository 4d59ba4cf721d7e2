-- A cheaper usage flush (docs/accounting.md, "A flush"): the same
-- contract and the same compare-and-set, with less work per row.

-- record_usage with the signature, checks and results of 0007. Per row it
-- costs one index probe and one heap-only update of the peer's bucket row;
-- what is the same for every row is computed once: the bucket of p_end
-- (usage_bucket is a SQL function with a subquery, which the planner
-- cannot inline, so calling it per row ran its executor 1,000 times a
-- flush) and the node's homes.
CREATE OR REPLACE FUNCTION waylume.record_usage(p_start timestamptz, p_end timestamptz,
	p_peers uuid[], p_upload bigint[], p_download bigint[])
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	node   uuid := waylume.current_node_id();
	width  interval;
	cur    timestamptz;
	mark   timestamptz;
	bad    uuid;
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
	cur := waylume.usage_bucket(p_end, coalesce(width, interval '1 hour'), NULL);
	-- usage_bucket per row, inlined: a quota reset inside the bucket
	-- starts a row of its own at the reset.
	WITH d AS MATERIALIZED (
		SELECT x.peer_id, sum(x.up)::bigint AS up, sum(x.down)::bigint AS down,
			CASE WHEN min(p.quota_reset_at) > cur AND min(p.quota_reset_at) <= p_end
			     THEN min(p.quota_reset_at) ELSE cur END AS bucket
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

INSERT INTO waylume.schema_migrations (version) VALUES ('0009_flush') ON CONFLICT DO NOTHING;
