-- Waylume control-plane schema: the tables app backends and nodes share.
-- Table and column names are a public contract (docs/contract.md).
-- Works on plain PostgreSQL 15+ and in a Supabase project; apply in one
-- transaction (waylume-node migrate, or psql -1 -f, or the Supabase CLI).

CREATE SCHEMA IF NOT EXISTS waylume;

CREATE TABLE IF NOT EXISTS waylume.schema_migrations (
	version    text PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT now()
);

-- A WireGuard key: base64 of exactly 32 bytes, canonical (the 43rd
-- character carries two zero padding bits).
CREATE OR REPLACE FUNCTION waylume.is_wg_key(k text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT k ~ '^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$' $$;

-- Every element is a plain host address (no prefix, no NULL).
CREATE OR REPLACE FUNCTION waylume.are_host_addresses(a inet[]) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT coalesce(bool_and(x IS NOT NULL AND masklen(x) = CASE family(x) WHEN 4 THEN 32 ELSE 128 END), true) FROM unnest(a) x $$;

CREATE TABLE IF NOT EXISTS waylume.nodes (
	id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	name            text NOT NULL UNIQUE,
	endpoint        text,
	listen_port     int NOT NULL DEFAULT 51820,
	address         inet NOT NULL,
	address6        inet,
	dns             inet[] NOT NULL DEFAULT '{}',
	mtu             int,
	public_key      text,
	status          text NOT NULL DEFAULT 'offline',
	last_seen_at    timestamptz,
	version         text,
	peer_count      int,
	active_sessions int,
	created_at      timestamptz NOT NULL DEFAULT now(),
	updated_at      timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT nodes_name_check CHECK (char_length(name) BETWEEN 1 AND 64 AND name !~ '[[:cntrl:]]'),
	CONSTRAINT nodes_endpoint_check CHECK (char_length(endpoint) <= 261
		AND endpoint ~ '^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}$'),
	CONSTRAINT nodes_listen_port_check CHECK (listen_port BETWEEN 1 AND 65535),
	-- The node's tunnel address with the pool prefix: a host of its own pool.
	CONSTRAINT nodes_address_check CHECK (family(address) = 4 AND masklen(address) BETWEEN 8 AND 30
		AND host(address) NOT IN (host(network(address)), host(broadcast(address)))),
	CONSTRAINT nodes_address6_check CHECK (family(address6) = 6 AND masklen(address6) BETWEEN 64 AND 126
		AND host(address6) NOT IN (host(network(address6)), host(broadcast(address6)))),
	CONSTRAINT nodes_dns_check CHECK (cardinality(dns) <= 8 AND waylume.are_host_addresses(dns)),
	CONSTRAINT nodes_mtu_check CHECK (mtu BETWEEN 1280 AND 9000),
	CONSTRAINT nodes_public_key_check CHECK (waylume.is_wg_key(public_key)),
	CONSTRAINT nodes_status_check CHECK (status IN ('online', 'offline', 'draining')),
	CONSTRAINT nodes_version_check CHECK (char_length(version) <= 64),
	CONSTRAINT nodes_peer_count_check CHECK (peer_count >= 0 AND active_sessions >= 0)
);

CREATE TABLE IF NOT EXISTS waylume.peers (
	id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	node_id              uuid NOT NULL REFERENCES waylume.nodes (id) ON DELETE CASCADE,
	public_key           text NOT NULL,
	preshared_key        text,
	-- NULL on insert: the allocator (0002) picks the lowest free host address.
	address              inet NOT NULL,
	address6             inet,
	allowed_ips          cidr[] NOT NULL DEFAULT '{}',
	persistent_keepalive int,
	download_kbps        int,
	upload_kbps          int,
	quota_bytes          bigint,
	quota_reset_at       timestamptz DEFAULT now(),
	expires_at           timestamptz,
	enabled              boolean NOT NULL DEFAULT true,
	metadata             jsonb NOT NULL DEFAULT '{}',
	created_at           timestamptz NOT NULL DEFAULT now(),
	updated_at           timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT peers_node_public_key_key UNIQUE (node_id, public_key),
	CONSTRAINT peers_node_address_key UNIQUE (node_id, address),
	CONSTRAINT peers_node_address6_key UNIQUE (node_id, address6),
	-- Lets peer_status reference (peer, node) so a status row always
	-- belongs to the peer's current node.
	CONSTRAINT peers_id_node_key UNIQUE (id, node_id),
	CONSTRAINT peers_public_key_check CHECK (waylume.is_wg_key(public_key)),
	CONSTRAINT peers_preshared_key_check CHECK (waylume.is_wg_key(preshared_key)),
	CONSTRAINT peers_address_check CHECK (family(address) = 4 AND masklen(address) = 32),
	CONSTRAINT peers_address6_check CHECK (family(address6) = 6 AND masklen(address6) = 128),
	CONSTRAINT peers_allowed_ips_check CHECK (cardinality(allowed_ips) <= 128 AND array_position(allowed_ips, NULL) IS NULL),
	CONSTRAINT peers_persistent_keepalive_check CHECK (persistent_keepalive BETWEEN 0 AND 65535),
	-- kbit/s: 1 kbit/s .. 100 Gbit/s.
	CONSTRAINT peers_download_kbps_check CHECK (download_kbps BETWEEN 1 AND 100000000),
	CONSTRAINT peers_upload_kbps_check CHECK (upload_kbps BETWEEN 1 AND 100000000),
	-- Positive; NULL is unlimited (0 would read as unlimited on the node). Max 1 EB.
	CONSTRAINT peers_quota_bytes_check CHECK (quota_bytes BETWEEN 1 AND 1000000000000000000),
	CONSTRAINT peers_metadata_check CHECK (jsonb_typeof(metadata) = 'object' AND pg_column_size(metadata) <= 16384)
);

CREATE TABLE IF NOT EXISTS waylume.peer_status (
	peer_id           uuid PRIMARY KEY,
	node_id           uuid NOT NULL,
	state             text NOT NULL,
	reason            text NOT NULL DEFAULT '',
	last_handshake_at timestamptz,
	endpoint          text,
	upload_bytes      bigint NOT NULL DEFAULT 0,
	download_bytes    bigint NOT NULL DEFAULT 0,
	-- Raw device counters already accounted into peer_usage, and the
	-- device epoch they came from (exactly-once accounting across restarts).
	rx_baseline       bigint NOT NULL DEFAULT 0,
	tx_baseline       bigint NOT NULL DEFAULT 0,
	counter_epoch     text NOT NULL DEFAULT '',
	applied_at        timestamptz,
	updated_at        timestamptz NOT NULL DEFAULT now(),
	-- A moved peer keeps its status row, re-homed to its new node.
	CONSTRAINT peer_status_peer_fkey FOREIGN KEY (peer_id, node_id)
		REFERENCES waylume.peers (id, node_id) ON DELETE CASCADE ON UPDATE CASCADE,
	CONSTRAINT peer_status_state_check CHECK (state IN ('active', 'blocked', 'rejected')),
	CONSTRAINT peer_status_reason_check CHECK (char_length(reason) <= 256),
	CONSTRAINT peer_status_endpoint_check CHECK (char_length(endpoint) <= 128),
	CONSTRAINT peer_status_bytes_check CHECK (upload_bytes >= 0 AND download_bytes >= 0
		AND rx_baseline >= 0 AND tx_baseline >= 0),
	CONSTRAINT peer_status_counter_epoch_check CHECK (char_length(counter_epoch) <= 128)
) WITH (fillfactor = 70); -- rewritten every usage flush: room for HOT updates
CREATE INDEX IF NOT EXISTS peer_status_node_idx ON waylume.peer_status (node_id);

-- Append-only usage deltas. No foreign key to peers: billing history
-- outlives the peer. The node reference restricts deletion: a node with
-- usage must have its usage archived or deleted first.
CREATE TABLE IF NOT EXISTS waylume.peer_usage (
	node_id        uuid NOT NULL REFERENCES waylume.nodes (id),
	peer_id        uuid NOT NULL,
	period_start   timestamptz NOT NULL,
	period_end     timestamptz NOT NULL,
	upload_bytes   bigint NOT NULL,
	download_bytes bigint NOT NULL,
	recorded_at    timestamptz NOT NULL DEFAULT now(),
	-- The idempotency key: a retried flush inserts nothing twice. Ordered
	-- (node, period_end, peer): a flush's rows share one period_end, so
	-- they append at one edge of the index and the writer's duplicate
	-- check reads only the batch's time range, not the node's history.
	CONSTRAINT peer_usage_pkey PRIMARY KEY (node_id, period_end, peer_id),
	CONSTRAINT peer_usage_period_check CHECK (period_end > period_start),
	CONSTRAINT peer_usage_bytes_check CHECK (upload_bytes >= 0 AND download_bytes >= 0)
);
CREATE INDEX IF NOT EXISTS peer_usage_peer_idx ON waylume.peer_usage (peer_id, period_end);

CREATE OR REPLACE FUNCTION waylume.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	NEW.updated_at := now();
	RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER nodes_touch BEFORE UPDATE ON waylume.nodes
	FOR EACH ROW EXECUTE FUNCTION waylume.touch_updated_at();
CREATE OR REPLACE TRIGGER peers_touch BEFORE UPDATE ON waylume.peers
	FOR EACH ROW EXECUTE FUNCTION waylume.touch_updated_at();
-- A usage flush rewrites every status row of a node: a writer that sets
-- updated_at = now() itself skips one PL/pgSQL call per row. Any other
-- value still fires the trigger, so updated_at is now() after every update
-- whoever writes it.
CREATE OR REPLACE TRIGGER peer_status_touch BEFORE UPDATE ON waylume.peer_status
	FOR EACH ROW WHEN (NEW.updated_at IS DISTINCT FROM now()) EXECUTE FUNCTION waylume.touch_updated_at();

INSERT INTO waylume.schema_migrations (version) VALUES ('0001_schema') ON CONFLICT DO NOTHING;
