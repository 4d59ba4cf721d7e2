#!/usr/bin/env bash
# make demo: the whole product on one machine, end to end, with real parts.
#
#   throwaway PostgreSQL (initdb in a temp dir, unix socket, wal_level=logical)
#   -> waylume-node migrate, node create (+ its own login role: RLS applies)
#   -> the app backend's part: one peer row with a 20 Mbit/s download limit
#   -> waylume-node run in namespace "node" (embedded userspace WireGuard)
#   -> a client in namespace "client" (Debian wireguard-go + wg)
#   -> handshake, shaped iperf3 throughput (asserted within 10% of 20 Mbit/s),
#      usage rows written back (asserted non-zero), metrics, waylume-node status
#
# Everything lives in two network namespaces and a temp dir made here and
# removed on exit, Ctrl-C or failure. Nothing touches the host's default
# namespace. Every process the demo starts is stopped, and the demo fails
# if one is left: it looks in its namespaces and for its run's tag in each
# process's environment, so a child of a child is found too. Needs root.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
umask 077 # keys and passwords in the work dir stay private

LIMIT_MBIT=20
TOLERANCE_PCT=10
IPERF_SECONDS=${IPERF_SECONDS:-8}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
info() { printf '   %s\n' "$*"; }
die() {
	printf '\n\033[31mdemo FAILED: %s\033[0m\n' "$*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (namespaces, tc and iptables need it): sudo make demo"

step "dependencies"
./scripts/deps.sh
for tool in ip tc iptables wg wireguard-go iperf3 psql runuser go; do
	command -v "$tool" >/dev/null || die "$tool not found (scripts/deps.sh installs all but go)"
done
info "all present"

step "build"
make -s build
BIN=$ROOT/bin/waylume-node
"$BIN" version

# Unique names: UAPI sockets in /var/run/wireguard are shared by every
# namespace, and interface names are limited to 15 characters.
ID=$$
NS_NODE=wl-demo-node-$ID
NS_CLI=wl-demo-cli-$ID
WG_NODE=wldn$ID
WG_CLI=wldc$ID
VETH_NODE=wlvn$ID
VETH_CLI=wlvc$ID
UNDERLAY_NODE=10.199.0.1
UNDERLAY_CLI=10.199.0.2
POOL_ADDR=10.201.0.1/24
NODE_TUN=10.201.0.1
WORK=$(mktemp -d /tmp/waylume-demo.XXXXXX)
# Inherited by everything started from here on (ip netns exec, env,
# runuser and pg_ctl keep the environment): the accounting at the end
# finds each of them by it.
export WAYLUME_DEMO_RUN=$ID-${WORK##*.}
PGDIR=$WORK/pg
NODE_PID=
CLI_WG_PID=
IPERF_PID=
POLL_PID=
PG_STARTED=
PG_PID=

# leftovers writes "pid command" to $WORK/leftovers for every process this
# run started that is still running: anything inside its namespaces, any
# process carrying its tag, and the postmaster. It runs in the demo's own
# shell (no pipeline or subshell alive while grep looks): the shell carries
# the tag and is skipped, grep runs without it, and bash expands the glob
# before grep starts.
leftovers() {
	local pid cmd
	: >"$WORK/pids"
	for ns in "$NS_NODE" "$NS_CLI"; do ip netns pids "$ns" >>"$WORK/pids" 2>/dev/null; done
	env -u WAYLUME_DEMO_RUN grep -lzxF "WAYLUME_DEMO_RUN=$WAYLUME_DEMO_RUN" /proc/[0-9]*/environ >>"$WORK/pids" 2>/dev/null
	if [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; then echo "$PG_PID" >>"$WORK/pids"; fi
	: >"$WORK/leftovers"
	for pid in $(sed 's|^/proc/\([0-9]*\)/environ$|\1|' "$WORK/pids" | sort -un); do
		[ "$pid" != $$ ] || continue
		cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)
		# Gone by now, or a zombie (no command line): not running.
		[ -n "$cmd" ] && printf '%s %s\n' "$pid" "$cmd" >>"$WORK/leftovers"
	done
}

cleanup() {
	code=$?
	set +e
	trap - EXIT INT TERM
	if [ "$code" != 0 ] && [ "$code" != 130 ] && [ "$code" != 143 ] && [ -s "$WORK/node.log" ]; then
		printf '\nlast node log lines:\n' >&2
		tail -n 30 "$WORK/node.log" >&2
		printf '\nnode side:\n' >&2
		ip netns exec "$NS_NODE" wg show "$WG_NODE" >&2
		ip netns exec "$NS_NODE" ip addr >&2
		ip netns exec "$NS_NODE" iptables-save >&2
		printf '\nclient side:\n' >&2
		cat "$WORK/client-wg.log" >&2
		ls -la /var/run/wireguard >&2
		ip netns exec "$NS_CLI" wg show "$WG_CLI" >&2
		ip netns exec "$NS_CLI" ip addr show "$WG_CLI" >&2
		# DEMO_HOLD=SECONDS keeps a failed setup for inspection.
		[ -n "${DEMO_HOLD:-}" ] && echo "holding for ${DEMO_HOLD}s: ip netns exec $NS_NODE ..." >&2 && sleep "$DEMO_HOLD"
	fi
	# The node first (SIGTERM: flush usage, mark offline), then the rest.
	if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then
		kill -TERM "$NODE_PID"
		for _ in $(seq 1 100); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$NODE_PID" 2>/dev/null
	fi
	for pid in "$IPERF_PID" "$POLL_PID" "$CLI_WG_PID"; do
		[ -n "$pid" ] && kill "$pid" 2>/dev/null
	done
	wait 2>/dev/null
	if [ -n "$PG_STARTED" ]; then
		runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate -w stop >/dev/null 2>&1
	fi
	# Everything started was stopped above by its own pid; what is still
	# running was not accounted for, and fails the demo.
	leftovers
	if [ -s "$WORK/leftovers" ]; then
		printf '\n\033[31mdemo FAILED: processes it started are still running (killed now):\033[0m\n' >&2
		cat "$WORK/leftovers" >&2
		kill -KILL $(cut -d' ' -f1 "$WORK/leftovers") 2>/dev/null
		[ "$code" = 0 ] && code=1
	fi
	ip netns del "$NS_CLI" 2>/dev/null
	ip netns del "$NS_NODE" 2>/dev/null
	rm -f "/var/run/wireguard/$WG_NODE.sock" "/var/run/wireguard/$WG_CLI.sock"
	rm -rf "$WORK"
	if [ "$code" = 0 ]; then
		printf '\n\033[32mdemo passed\033[0m (everything it created is removed; no process it started is left)\n'
	else
		printf 'cleaned up\n' >&2
	fi
	exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# waitfor SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
waitfor() {
	local secs=$1 what=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || die "timed out after ${secs}s waiting for $what"
		if [ -n "$NODE_PID" ] && ! kill -0 "$NODE_PID" 2>/dev/null; then
			die "the node exited while waiting for $what"
		fi
		sleep 0.2
	done
}

step "throwaway PostgreSQL"
if command -v initdb >/dev/null; then
	PGBIN=$(dirname "$(command -v initdb)")
else
	PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
id postgres >/dev/null 2>&1 || die "no postgres user (apt-get install postgresql)"
mkdir -p "$PGDIR"
chmod 0755 "$WORK"
chown postgres "$PGDIR"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDIR/data" -U postgres -A trust -E UTF8 --no-sync --locale=C >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w -o \
	"-c listen_addresses='' -c unix_socket_directories='$PGDIR' -c wal_level=logical -c fsync=off" start >/dev/null
PG_STARTED=1
PG_PID=$(head -n 1 "$PGDIR/data/postmaster.pid")
ADMIN_URL="postgres://postgres@/postgres?host=$PGDIR&sslmode=disable"
sql() { psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -qAt "$@"; }
info "$("$PGBIN/postgres" --version), socket in $PGDIR, wal_level=$(sql -c 'show wal_level')"

step "migrate"
WAYLUME_DATABASE_URL=$ADMIN_URL "$BIN" migrate | sed 's/^/   /'

step "create the node and its login role"
NODE_ID=$(WAYLUME_DATABASE_URL=$ADMIN_URL "$BIN" node create --name "demo-$ID" \
	--endpoint "$UNDERLAY_NODE:51820" --address "$POOL_ADDR" --login-password-file "$WORK/node.password" 2>"$WORK/create.err") ||
	die "node create: $(cat "$WORK/create.err")"
NODE_ROLE=waylume_node_${NODE_ID//-/}
# The node connects as its own role: row level security shows it only its rows.
NODE_URL="postgres://$NODE_ROLE@/postgres?host=$PGDIR&sslmode=disable"
info "node id $NODE_ID, database role $NODE_ROLE"

step "namespaces: node and client, joined by a veth pair"
ip netns add "$NS_NODE"
ip netns add "$NS_CLI"
ip link add "$VETH_NODE" netns "$NS_NODE" type veth peer name "$VETH_CLI" netns "$NS_CLI"
ip -n "$NS_NODE" addr add "$UNDERLAY_NODE/24" dev "$VETH_NODE"
ip -n "$NS_CLI" addr add "$UNDERLAY_CLI/24" dev "$VETH_CLI"
for ns in "$NS_NODE" "$NS_CLI"; do ip -n "$ns" link set lo up; done
ip -n "$NS_NODE" link set "$VETH_NODE" up
ip -n "$NS_CLI" link set "$VETH_CLI" up
info "$NS_NODE ($UNDERLAY_NODE) <-> $NS_CLI ($UNDERLAY_CLI)"

step "the app backend inserts a peer (20 Mbit/s download limit; the database allocates its address)"
wg genkey >"$WORK/client.key"
CLIENT_PUB=$(wg pubkey <"$WORK/client.key")
read -r PEER_ID CLIENT_ADDR < <(sql -F ' ' -c "
	INSERT INTO waylume.peers (node_id, public_key, download_kbps, persistent_keepalive)
	VALUES ('$NODE_ID', '$CLIENT_PUB', $((LIMIT_MBIT * 1000)), 15)
	RETURNING id, host(address)")
info "peer $PEER_ID gets $CLIENT_ADDR"

step "preflight: waylume-node check (node namespace, node credentials)"
ip netns exec "$NS_NODE" env WAYLUME_DATABASE_URL="$NODE_URL" WAYLUME_NODE_ID="$NODE_ID" \
	WAYLUME_WG_MODE=userspace WAYLUME_INTERFACE="$WG_NODE" WAYLUME_EGRESS_INTERFACE="$VETH_NODE" \
	"$BIN" check | sed 's/^/   /' || die "waylume-node check failed"

step "run the node (userspace WireGuard, LISTEN/NOTIFY, usage every 2s)"
# Clients reach no port on the node unless allowed: the iperf3 server is.
ip netns exec "$NS_NODE" env \
	WAYLUME_DATABASE_URL="$NODE_URL" \
	WAYLUME_NODE_ID="$NODE_ID" \
	WAYLUME_INTERFACE="$WG_NODE" \
	WAYLUME_WG_MODE=userspace \
	WAYLUME_PRIVATE_KEY_FILE="$WORK/node.key" \
	WAYLUME_EGRESS_INTERFACE="$VETH_NODE" \
	WAYLUME_ALLOW_LOCAL=tcp/5201 \
	WAYLUME_USAGE_INTERVAL=2s \
	WAYLUME_RESYNC_INTERVAL=30s \
	WAYLUME_LOG_FORMAT=text \
	"$BIN" run >"$WORK/node.log" 2>&1 &
NODE_PID=$!
node_ns() { ip netns exec "$NS_NODE" "$@"; }
waitfor 60 "the node to be ready (/readyz)" node_ns "$BIN" healthcheck --ready
NODE_PUB=$(sql -c "SELECT public_key FROM waylume.nodes WHERE id = '$NODE_ID'")
[ -n "$NODE_PUB" ] || die "the node did not publish its public key"
info "ready; node public key $NODE_PUB (written to waylume.nodes by the node)"

step "client: wireguard-go + wg, configured from the allocated address and the node's public key"
cat <<EOF | sed 's/^/   | /'
[Interface]
PrivateKey = <client private key>
Address = $CLIENT_ADDR/32

[Peer]
PublicKey = $NODE_PUB
Endpoint = $UNDERLAY_NODE:51820
AllowedIPs = ${POOL_ADDR%.*}.0/24
PersistentKeepalive = 15
EOF
ip netns exec "$NS_CLI" env WG_PROCESS_FOREGROUND=1 wireguard-go "$WG_CLI" >"$WORK/client-wg.log" 2>&1 &
CLI_WG_PID=$!
cli_ns() { ip netns exec "$NS_CLI" "$@"; }
waitfor 10 "the client's wireguard-go" test -S "/var/run/wireguard/$WG_CLI.sock"
cli_ns wg set "$WG_CLI" private-key "$WORK/client.key" \
	peer "$NODE_PUB" endpoint "$UNDERLAY_NODE:51820" allowed-ips "${POOL_ADDR%.*}.0/24" persistent-keepalive 15
ip -n "$NS_CLI" addr add "$CLIENT_ADDR/24" dev "$WG_CLI"
ip -n "$NS_CLI" link set "$WG_CLI" up

step "handshake"
# The client's persistent keepalive starts the handshake as soon as it is
# configured; the node answers only once it has applied the peer row.
handshake() { cli_ns wg show "$WG_CLI" latest-handshakes | awk '$2 > 0 { ok = 1 } END { exit !ok }'; }
waitfor 30 "the WireGuard handshake" handshake
HS=$(cli_ns wg show "$WG_CLI" latest-handshakes | awk '{print $2}')
info "handshake $(($(date +%s) - HS))s ago (client: wg show $WG_CLI)"
cli_ns wg show "$WG_CLI" | sed -n 's/^/   /;/endpoint\|handshake\|transfer/p'

step "shaped throughput: node -> client, limit $LIMIT_MBIT Mbit/s"
# Started directly, not through node_ns: a function run in the background
# is a subshell, and $! would be its pid, not iperf3's.
ip netns exec "$NS_NODE" iperf3 -s -B "$NODE_TUN" -p 5201 >"$WORK/iperf-server.log" 2>&1 &
IPERF_PID=$!
# Not probed through the tunnel: iperf3 serves one client at a time and a
# probe connection can make it reset the real test. The test itself is the
# proof that the tunnel carries data.
waitfor 10 "the iperf3 server" node_ns ss -Htln "sport = :5201"
measure() {
	cli_ns iperf3 -c "$NODE_TUN" -p 5201 -R -t "$IPERF_SECONDS" -O 2 -f m >"$WORK/iperf.txt" ||
		die "iperf3: $(cat "$WORK/iperf.txt")"
	sed 's/^/   /' "$WORK/iperf.txt" | grep -E 'receiver|sender' || true
	MBIT=$(awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i-1) }' "$WORK/iperf.txt" | tail -n 1)
	[ -n "$MBIT" ] || die "could not read the throughput from iperf3"
}
inband() { awk -v m="$MBIT" -v l="$LIMIT_MBIT" -v t="$TOLERANCE_PCT" -v side="$1" \
	'BEGIN { lo = l * (1 - t / 100); hi = l * (1 + t / 100); exit !(side == "low" ? m >= lo : m >= lo && m <= hi) }'; }
measure
# A shaper that leaks shows up above the band and fails at once. Below the
# band can also be a CPU starved by other work on this machine (userspace
# WireGuard on both ends), so that case is measured once more.
if ! inband low; then
	info "measured $MBIT Mbit/s, below the band; measuring once more"
	measure
fi
if inband both; then
	info "measured $MBIT Mbit/s: within ${TOLERANCE_PCT}% of $LIMIT_MBIT Mbit/s"
else
	die "measured $MBIT Mbit/s, not within ${TOLERANCE_PCT}% of $LIMIT_MBIT Mbit/s"
fi

step "the app backend lowers the limit to 10 Mbit/s: how fast the kernel follows"
# One poller process inside the namespace, started before the UPDATE, so
# the figure is not mostly process start-up.
ip netns exec "$NS_NODE" bash -c "t0=\$(date +%s%N); until tc class show dev $WG_NODE | grep -q 'rate 10Mbit'; do
	[ \$(( (\$(date +%s%N) - t0) / 1000000 )) -lt 10000 ] || exit 1; done; date +%s%N" >"$WORK/applied_at" &
POLL_PID=$!
sleep 0.2
T0=$(date +%s%N)
psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -qAt -c "\\timing on" -c "UPDATE waylume.peers SET download_kbps = 10000 WHERE id = '$PEER_ID'" | sed "s/^/   psql: /"
T1=$(date +%s%N)
wait "$POLL_PID" || die "the new limit did not reach tc within 10s"
POLL_PID=
TA=$(cat "$WORK/applied_at")
# The commit happened somewhere between starting psql and psql returning.
info "tc showed rate 10Mbit $(((TA - T1) / 1000000))-$(((TA - T0) / 1000000)) ms after the commit (LISTEN/NOTIFY -> reconcile -> netlink; the range is psql's own run time)"

step "usage rows written back by the node"
usage_bytes() { sql -c "SELECT coalesce(sum(download_bytes), 0) FROM waylume.peer_usage WHERE peer_id = '$PEER_ID'"; }
# The test moved at least limit * seconds / 2 bytes; wait for a flush that covers them.
WANT=$((LIMIT_MBIT * 1000000 / 8 * IPERF_SECONDS / 2))
waitfor 30 "usage rows covering the transfer" test "$(usage_bytes)" -ge "$WANT"
sql -c "SELECT count(*) || ' rows, upload ' || pg_size_pretty(sum(upload_bytes)) || ', download ' || pg_size_pretty(sum(download_bytes))
	FROM waylume.peer_usage WHERE peer_id = '$PEER_ID'" | sed 's/^/   /'
psql "$ADMIN_URL" -q -c "SELECT to_char(period_start, 'HH24:MI:SS') AS period_start, to_char(period_end, 'HH24:MI:SS') AS period_end,
	upload_bytes, download_bytes FROM waylume.peer_usage WHERE peer_id = '$PEER_ID' AND download_bytes > 0
	ORDER BY period_end DESC LIMIT 5" | sed 's/^/   /'
TOTAL=$(usage_bytes)
[ "$TOTAL" -gt 0 ] || die "no usage written"
info "peer_status: $(sql -c "SELECT state || ', download ' || pg_size_pretty(download_bytes) FROM waylume.peer_status WHERE peer_id = '$PEER_ID'")"

step "metrics (node namespace, 127.0.0.1:9586)"
node_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/9586 && printf "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n" >&3 && cat <&3' >"$WORK/metrics.txt"
missing=()
for m in waylume_build_info waylume_peers waylume_active_sessions waylume_reconcile_duration_seconds \
	waylume_reconcile_errors_total waylume_events_received_total waylume_events_applied_total \
	waylume_events_coalesced_total waylume_usage_flush_duration_seconds waylume_usage_flush_errors_total \
	waylume_usage_backlog_bytes waylume_peer_upload_bytes_total waylume_peer_download_bytes_total \
	waylume_peer_handshake_age_seconds; do
	grep -q "^$m" "$WORK/metrics.txt" || missing+=("$m")
done
grep -E '^waylume_(build_info|peers|active_sessions|peer_download_bytes_total)' "$WORK/metrics.txt" | sed 's/^/   /' | head -n 8
[ ${#missing[@]} -eq 0 ] || die "metrics missing from /metrics: ${missing[*]}"
info "all listed series present"

step "waylume-node status (node namespace)"
node_ns env WAYLUME_DATABASE_URL="$NODE_URL" WAYLUME_NODE_ID="$NODE_ID" WAYLUME_INTERFACE="$WG_NODE" \
	"$BIN" status | sed 's/^/   /'

step "stop the node (SIGTERM: flush usage, mark offline)"
kill -TERM "$NODE_PID"
for _ in $(seq 1 100); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$NODE_PID" 2>/dev/null && die "the node did not stop within 10s of SIGTERM"
wait "$NODE_PID" || die "the node exited with status $?"
NODE_PID=
info "node status in the database: $(sql -c "SELECT status FROM waylume.nodes WHERE id = '$NODE_ID'")"
