#!/usr/bin/env bash
# make container-test: the image built by a real engine and the node run
# from it exactly as compose.yaml runs it, against a throwaway PostgreSQL,
# with a real WireGuard client.
#
#   podman (Debian's) with runc, its configuration and storage under
#   $CONTAINER_CACHE (the system's /etc/containers is not used)
#   -> base images made here, no registry needed: a debootstrap minbase
#      bookworm tree as debian:bookworm-slim, and that plus this machine's Go
#      toolchain and CA bundle as golang:1.26-bookworm
#   -> podman build --format docker (keeps HEALTHCHECK) of the Dockerfile
#   -> cmd/waylume-node/container_test.go (build tag containertest): the
#      container in a network namespace the test made, with compose.yaml's
#      node settings, healthcheck, check, a peer row and a client, SIGTERM
#   -> the host's network state (iptables, sysctls, links, routes) compared
#      with the state before: any difference fails the run
#
# Containers never get podman's default bridge network (it changes the
# host's iptables and ip_forward): every container and build step names its
# network, and the default in the configuration here is none. Needs root.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${CONTAINER_CACHE:-/var/cache/waylume/container-test}
IMAGE=localhost/waylume-node:container-test
# A base image older than this is made again (security updates).
BASE_MAX_AGE_DAYS=7

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
info() { printf '   %s\n' "$*"; }
die() {
	printf '\n\033[31mcontainer-test FAILED: %s\033[0m\n' "$*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (podman, namespaces): sudo make container-test"
command -v go >/dev/null || die "go not found: the golang image is made from this machine's toolchain"

WORK=$(mktemp -d /tmp/waylume-ctr.XXXXXX)
RUNROOT=/run/waylume-container-test

# netstate prints the host's network state that a container engine could
# change: the sysctls, firewall rules (counters dropped), links, addresses,
# routes and rules.
netstate() {
	local f
	for f in net/ipv4/ip_forward net/ipv6/conf/all/forwarding net/ipv4/conf/all/src_valid_mark; do
		echo "$f=$(cat "/proc/sys/$f")"
	done
	for t in iptables-save ip6tables-save; do
		if command -v "$t" >/dev/null; then
			echo "# $t"
			"$t" 2>&1 | sed -e '/^#/d' -e 's/\[[0-9]*:[0-9]*\]//'
		fi
	done
	if command -v nft >/dev/null; then
		echo "# nft"
		nft list ruleset 2>&1 | sed -e 's/counter packets [0-9]* bytes [0-9]*/counter/'
	fi
	echo "# links"
	ip -o link show | sed -e 's/^[0-9]*: //'
	echo "# addresses"
	ip -o addr show | sed -e 's/^[0-9]*: //' -e 's/valid_lft [^ ]* preferred_lft [^ ]*//'
	echo "# routes"
	ip route show table all
	ip -6 route show table all | sed -e 's/expires [^ ]* //'
	echo "# rules"
	ip rule show
	ip -6 rule show
}

cleanup() {
	code=$?
	set +e
	trap - EXIT INT TERM
	if [ -n "${PODMAN_READY:-}" ]; then
		# Anything a failed run left: containers only; images stay cached.
		podman ps -aq --filter label=waylume.container-test | xargs -r podman rm -f -t 0 >/dev/null
	fi
	if [ -s "$WORK/before" ]; then
		netstate >"$WORK/after"
		if ! diff -u "$WORK/before" "$WORK/after" >"$WORK/netdiff"; then
			printf '\n\033[31mcontainer-test FAILED: the host network state changed:\033[0m\n' >&2
			cat "$WORK/netdiff" >&2
			[ "$code" = 0 ] && code=1
		fi
	fi
	rm -rf "$WORK"
	if [ "$code" = 0 ]; then
		printf '\n\033[32mcontainer-test passed\033[0m (host network state unchanged)\n'
	fi
	exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "host network state (compared at the end)"
netstate >"$WORK/before"
info "$(wc -l <"$WORK/before") lines: sysctls, iptables, links, addresses, routes, rules"

step "dependencies"
./scripts/deps.sh
need=()
for p in podman runc debootstrap; do command -v "$p" >/dev/null || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
	info "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# No recommends: crun (fails on this kind of host's mixed cgroups) and
	# the rootless helpers are not wanted.
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
info "$(podman --version), $(runc --version | head -n 1)"

step "podman configuration in $CACHE"
mkdir -p "$CACHE/storage" "$RUNROOT"
# The open-files and process limits podman gives containers by default
# exceed what this sandbox's hard limits allow: use those (podman itself
# runs with at most pid_max processes).
NOFILE=$(ulimit -Hn)
NPROC=$(ulimit -Hu)
PIDMAX=$(cat /proc/sys/kernel/pid_max)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
{ [ "$NPROC" = unlimited ] || [ "$NPROC" -gt "$PIDMAX" ]; } && NPROC=$PIDMAX
cat >"$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
netns = "none"
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$RUNROOT/libpod"

[network]
network_config_dir = "$CACHE/networks"
EOF
cat >"$CACHE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$RUNROOT/storage"
EOF
export CONTAINERS_CONF=$CACHE/containers.conf CONTAINERS_STORAGE_CONF=$CACHE/storage.conf
# No registry is consulted: every image is local.
export CONTAINERS_REGISTRIES_CONF=$CACHE/registries.conf
printf 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n' >"$CACHE/registries.conf"
PODMAN_READY=1
info "runtime runc, storage $CACHE/storage, default network none"

# fresh FILE: FILE exists and is younger than BASE_MAX_AGE_DAYS.
fresh() { [ -s "$1" ] && [ -z "$(find "$1" -mtime +"$BASE_MAX_AGE_DAYS")" ]; }

step "base images (made here: no registry is reachable from CI)"
T0=$SECONDS
ROOTFS_TAR=$CACHE/bookworm-minbase.tar
if ! fresh "$ROOTFS_TAR"; then
	info "debootstrap --variant=minbase bookworm"
	rm -rf "$CACHE/rootfs.tmp"
	debootstrap --variant=minbase bookworm "$CACHE/rootfs.tmp" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 ||
		die "debootstrap: $(tail -n 5 "$WORK/debootstrap.log")"
	# The sources of debian:bookworm-slim, not only the release.
	rm -f "$CACHE/rootfs.tmp/etc/apt/sources.list"
	cat >"$CACHE/rootfs.tmp/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
	rm -rf "$CACHE/rootfs.tmp/var/cache/apt/archives/"*.deb "$CACHE/rootfs.tmp/var/lib/apt/lists/"*
	tar -C "$CACHE/rootfs.tmp" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
	mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
	rm -rf "$CACHE/rootfs.tmp"
	podman rmi -f docker.io/library/debian:bookworm-slim docker.io/library/golang:1.26-bookworm >/dev/null 2>&1 || true
fi
BASE_ID=$(sha256sum "$ROOTFS_TAR" | cut -c1-16)
image_label() { podman image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }
if [ "$(image_label docker.io/library/debian:bookworm-slim waylume.base)" != "$BASE_ID" ]; then
	info "import debian:bookworm-slim"
	podman import --change "LABEL waylume.base=$BASE_ID" --change 'CMD ["bash"]' \
		"$ROOTFS_TAR" docker.io/library/debian:bookworm-slim >/dev/null
fi
GOROOT_HOST=$(go env GOROOT)
GO_ID="$BASE_ID $(go env GOVERSION) $(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
if [ "$(image_label docker.io/library/golang:1.26-bookworm waylume.base)" != "$GO_ID" ]; then
	info "import golang:1.26-bookworm ($(go env GOVERSION) from $GOROOT_HOST, host CA bundle)"
	# The minbase tree, the toolchain at /usr/local/go and the CA bundle
	# (HTTPS to the module proxy) in one layer.
	mkdir -p "$WORK/go/usr/local" "$WORK/go/etc/ssl/certs"
	cp /etc/ssl/certs/ca-certificates.crt "$WORK/go/etc/ssl/certs/"
	ln -s "$GOROOT_HOST" "$WORK/go/usr/local/go"
	cp "$ROOTFS_TAR" "$WORK/golang.tar"
	tar -C "$WORK/go" --numeric-owner --owner=0 --group=0 -rhf "$WORK/golang.tar" ./usr/local/go ./etc/ssl/certs/ca-certificates.crt
	podman import \
		--change "LABEL waylume.base=$GO_ID" \
		--change 'ENV PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENV GOPATH=/go' --change 'ENV GOTOOLCHAIN=local' \
		--change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
		--change 'WORKDIR /go' --change 'CMD ["bash"]' \
		"$WORK/golang.tar" docker.io/library/golang:1.26-bookworm >/dev/null
	rm -f "$WORK/golang.tar"
fi
info "debian:bookworm-slim and golang:1.26-bookworm ready ($((SECONDS - T0))s)"

step "podman build --format docker"
T0=$SECONDS
VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
# Build steps share the host's network stack (apt, the module proxy):
# nothing is created in it, unlike the default bridge. The build stage
# uses this machine's module and build caches (the same toolchain at the
# same path, and -trimpath keeps directories out of the cache keys):
# empty ones only make the build slower, warm ones (make test, make
# build) make it take seconds.
GOMODCACHE_HOST=$(go env GOMODCACHE)
GOCACHE_HOST=$(go env GOCACHE)
mkdir -p "$GOMODCACHE_HOST" "$GOCACHE_HOST"
podman build --format docker --network=host --pull=never \
	-v "$GOMODCACHE_HOST:/go/pkg/mod" -v "$GOCACHE_HOST:/root/.cache/go-build" \
	--build-arg VERSION="$VERSION" -t "$IMAGE" -f Dockerfile . >"$WORK/build.log" 2>&1 ||
	die "podman build: $(tail -n 20 "$WORK/build.log")"
info "$IMAGE ($((SECONDS - T0))s): $(podman image inspect --format '{{.Size}} bytes, healthcheck {{.HealthCheck.Test}}' "$IMAGE")"
[ -n "$(podman image inspect --format '{{.HealthCheck.Test}}' "$IMAGE" | grep healthcheck)" ] ||
	die "the image lost its HEALTHCHECK (build with --format docker)"
# Earlier builds' images, now untagged, would pile up in the cache.
podman image prune -f >/dev/null

step "the node container, run as compose.yaml runs it"
T0=$SECONDS
if ! WAYLUME_CONTAINER_IMAGE=$IMAGE go test -tags containertest -count=1 -timeout 10m \
	-run '^TestContainer' -v ./cmd/waylume-node 2>&1 | sed 's/^/   /'; then
	die "the container test failed"
fi
info "($((SECONDS - T0))s)"
