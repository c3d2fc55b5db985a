# plugind — the Makefile is what CI runs (.ci/run calls `make test`).
PREFIX ?= /usr/local
CARGO ?= cargo
SOCKET ?= $(CURDIR)/state/plugind.sock

.PHONY: all build release run gateway wiz test lint pluginctl-deps fmt test-rust test-sdk bench install clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace

## run: build, then run plugind in the foreground on examples/ (Ctrl-C stops it).
run: release
	@mkdir -p state
	@echo "plugind: starting on examples/ — in another terminal:"
	@echo "  ./target/release/pluginctl --socket $(SOCKET) list"
	@echo "  ./target/release/pluginctl --socket $(SOCKET) call echo-rust hello '{\"name\":\"you\"}'"
	@echo "  (or: export PLUGIND_SOCKET=$(SOCKET); then just ./target/release/pluginctl list)"
	PLUGIND_PROFILE=release ./target/release/plugind --plugins examples --socket $(SOCKET) --state-dir state

## gateway: build, then run plugind on the LLM gateway's plugins and the gateway on 127.0.0.1:$${GATEWAY_PORT:-8088}.
gateway: release
	scripts/gateway.sh

## test: everything CI checks: format, lints, Rust tests, SDK tests.
test: lint test-rust test-sdk

lint: pluginctl-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## pluginctl-deps: pluginctl links the plugind-client library, never the daemon crate (plugind).
pluginctl-deps:
	@if $(CARGO) tree -p pluginctl -e normal,build --prefix none | grep -q '^plugind v'; then \
		echo "pluginctl links the daemon crate: see cargo tree -p pluginctl -i plugind"; exit 1; \
	else echo "pluginctl-deps: pluginctl does not link the daemon crate"; fi

test-rust:
	$(CARGO) build --workspace
	$(CARGO) test --workspace
	$(CARGO) run -q -p plugind-bench -- --smoke

test-sdk:
	python3 -m unittest discover -s sdk/python -p 'test_*.py'
	node --test sdk/node/test/

fmt:
	$(CARGO) fmt --all

## wiz: the Project Wiz seed, one-shot: plugind, the Python host providing `ui`, and the theme plugin
## registering its theme through it (examples/wiz-host/README.md).
wiz: build
	./examples/wiz-host/run.sh

## bench: plugind against floors (pipe, relay, router, bare spawn) and the MCP SDKs, pinned and unpinned (docs/benchmarks.md).
bench: release
	$(CARGO) run --release -p plugind-bench --

install: release
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 target/release/plugind target/release/pluginctl $(DESTDIR)$(PREFIX)/bin/

clean:
	$(CARGO) clean
	rm -rf state
