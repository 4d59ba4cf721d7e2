# syntax=docker/dockerfile:1
# Waylume node image. The build stage runs exactly `make build`'s command
# (cmd/waylume-node/dockerfile_test.go keeps them equal); the runtime stage
# adds only what the data plane executes: iptables(-restore) and iproute2.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o bin/waylume-node ./cmd/waylume-node

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/waylume /run/wireguard \
 && chmod 0700 /var/lib/waylume
COPY --from=build /src/bin/waylume-node /usr/local/bin/waylume-node
# The process runs as root inside its own network namespace, with every
# capability dropped but NET_ADMIN (compose.yaml: cap_drop ALL, cap_add
# NET_ADMIN). A non-root user cannot work here: the node executes
# iptables-restore and tc, which need NET_ADMIN in their effective set, and
# Docker grants no ambient capabilities to non-root users.
VOLUME ["/var/lib/waylume"]
ENV WAYLUME_PRIVATE_KEY_FILE=/var/lib/waylume/private.key
EXPOSE 51820/udp
# /healthz on the loopback metrics address (WAYLUME_METRICS_ADDR); the image
# has no curl, the binary checks itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["waylume-node", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["waylume-node"]
CMD ["run"]
