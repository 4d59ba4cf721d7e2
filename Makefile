# Waylume node. Targets need root for the network tests (namespaces, tc,
# iptables) and install nothing themselves except `demo`, `container-test`
# and `deps`.
GO      ?= go
PKGS    ?= ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build test bench demo container-test deps fuzz vet clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/waylume-node ./cmd/waylume-node

# Packages run one at a time: the shaping tests measure throughput and must
# not share two cores with another package's traffic.
test: deps
	$(GO) vet $(PKGS)
	$(GO) test -p 1 -count=1 -timeout 60m $(PKGS)

bench:
	$(GO) test -p 1 -run '^$$' -bench . -benchtime 1x -timeout 60m $(PKGS)

deps:
	./scripts/deps.sh

# Brief fuzzing of the Realtime frame decoder (seed corpus in
# supabase/realtime/testdata/fuzz); FUZZTIME=1m for longer runs.
FUZZTIME ?= 10s
fuzz:
	$(GO) test ./supabase/realtime -run '^$$' -fuzz '^FuzzDecodeFrame$$' -fuzztime $(FUZZTIME)

demo: deps
	./scripts/demo.sh

# The image built by a real engine (Debian's podman with runc; installed
# when missing) and run the way compose.yaml runs the node. Base images
# (made with debootstrap: no registry needed) and podman's storage are
# kept in CONTAINER_CACHE; an empty one is filled in a few minutes.
CONTAINER_CACHE ?= /var/cache/waylume/container-test
container-test: deps
	CONTAINER_CACHE=$(CONTAINER_CACHE) ./scripts/container-test.sh

clean:
	rm -rf bin
