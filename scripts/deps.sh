#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for the tests and the demo.
# Only missing packages are installed; nothing is installed when all are there.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

have_pg_bin() { have initdb || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
have_pg_bin || need+=(postgresql)
ls /usr/lib/postgresql/*/lib/wal2json.so >/dev/null 2>&1 || need+=(postgresql-15-wal2json)
have wg || need+=(wireguard-tools)
have wireguard-go || need+=(wireguard-go)
have iptables-restore || need+=(iptables)
have iperf3 || need+=(iperf3)
have ping || need+=(iputils-ping)
have tc && have ip || need+=(iproute2)
have node || need+=(nodejs)
have npm || need+=(npm)
have curl || need+=(curl)

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing ${need[*]}; run as root or: apt-get install ${need[*]}" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# The conformance tests run the official @supabase/realtime-js and
# @supabase/auth-js clients.
for dir in supabase/realtime/realtimetest/js supabase/auth/authtest/js; do
	if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules" ]; then
		(cd "$dir" && npm ci --no-audit --no-fund --silent)
	fi
done
