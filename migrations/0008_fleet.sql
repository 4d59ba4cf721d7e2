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

INSERT INTO waylume.schema_migrations (version) VALUES ('0008_fleet') ON CONFLICT DO NOTHING;
