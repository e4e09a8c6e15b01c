# refill — `make demo` runs a backfill on an embedded SQLite database,
# `make test` runs every test. Both install what they need first.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
REFILL_DEBUG := target/debug/refill
REFILL_RELEASE := target/release/refill
export REFILL_TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/test
export REFILL_TEST_MYSQL_URL ?= mysql://root@127.0.0.1:3306/test

# Debian's second toolchain builds the wasm guests when rustup has no wasm
# target (rustup cannot download here); see ../shared/TOOLCHAIN.md.
GUEST_PACKAGES := rustc-web cargo-web rust-web-src lld-16
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq

# The Python and JavaScript guests' compilers, pinned: componentize-py in a
# venv of its own (plugins/requirements-guests.txt), componentize-js from
# npm (plugins/js-toolchain/package-lock.json). The builder finds them here.
PY_TOOLS := target/tools/py
JS_TOOLS := plugins/js-toolchain
export REFILL_COMPONENTIZE_PY ?= $(abspath $(PY_TOOLS)/bin/componentize-py)
export REFILL_COMPONENTIZE_JS ?= $(abspath $(JS_TOOLS)/node_modules/.bin/componentize-js)
# C guests: Debian's clang-16 with wasi-libc and the wasm32 compiler-rt, and
# wit-bindgen's C generator, pinned (the version refill build names).
C_PACKAGES := clang-16 wasi-libc libclang-rt-16-dev-wasm32
C_TOOLS := target/tools/c
WIT_BINDGEN_VERSION := 0.63.0
export REFILL_WIT_BINDGEN ?= $(abspath $(C_TOOLS)/bin/wit-bindgen)

.PHONY: help
help:
	@echo "make demo      build, then plan, dry-run, execute, show and verify a backfill on demo/demo.db"
	@echo "make test      build the plugins and run every test (needs PostgreSQL: REFILL_TEST_POSTGRES_URL,"
	@echo "               and MariaDB/MySQL: REFILL_TEST_MYSQL_URL)"
	@echo "make plugins   build every transform under plugins/ (Rust, Python, JavaScript, C) into plugins/dist/*.wasm"
	@echo "make bench     rows/s of refill against a single UPDATE, the chunked floor and 1- and 2-session"
	@echo "               scripts on a 1,000,000-row PostgreSQL table, and pgbench's latency with no backfill,"
	@echo "               a default one and an unthrottled one; then refill against a single UPDATE on MariaDB"
	@echo "make bench-large  the same speed tables at 10,000,000 rows"
	@echo "make lint      rustfmt and clippy"

.PHONY: toolchain
toolchain: $(PY_TOOLS)/.installed $(JS_TOOLS)/node_modules/.installed $(C_TOOLS)/.installed
	@if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then \
		echo "toolchain: using rustup's wasm32-unknown-unknown target"; \
	elif [ -x /usr/bin/cargo ] && [ -x /usr/lib/llvm-16/bin/wasm-ld ] && [ -f /usr/lib/rustlib/src/rust/library/Cargo.lock ]; then \
		echo "toolchain: using Debian's rustc-web with build-std for wasm32"; \
	else \
		echo "toolchain: installing $(GUEST_PACKAGES) from Debian"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(GUEST_PACKAGES); \
	fi
	@command -v python3 >/dev/null || { $(APT_INSTALL) python3; }

# Redone when the requirements change; the marker is written last, so an
# interrupted install is redone too.
$(PY_TOOLS)/.installed: plugins/requirements-guests.txt
	@command -v python3 >/dev/null || { $(APT_INSTALL) python3; }
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { $(APT_INSTALL) python3-venv; }
	@echo "toolchain: installing $$(grep -v '^#' $<) into $(PY_TOOLS)"
	@rm -rf $(PY_TOOLS)
	@python3 -m venv $(PY_TOOLS)
	@$(PY_TOOLS)/bin/pip install --quiet --disable-pip-version-check -r $<
	@touch $@

$(C_TOOLS)/.installed:
	@if ! command -v clang-16 >/dev/null || [ ! -f /usr/lib/wasm32-wasi/libc.a ] \
		|| [ ! -f /usr/lib/llvm-16/lib/clang/16/lib/wasi/libclang_rt.builtins-wasm32.a ]; then \
		echo "toolchain: installing $(C_PACKAGES) from Debian"; \
		$(APT_INSTALL) $(C_PACKAGES); \
	fi
	@echo "toolchain: installing wit-bindgen-cli $(WIT_BINDGEN_VERSION) into $(C_TOOLS)"
	@$(CARGO) install --quiet --locked wit-bindgen-cli@$(WIT_BINDGEN_VERSION) --root $(C_TOOLS)
	@touch $@

$(JS_TOOLS)/node_modules/.installed: $(JS_TOOLS)/package.json $(JS_TOOLS)/package-lock.json
	@command -v npm >/dev/null || { $(APT_INSTALL) nodejs npm; }
	@echo "toolchain: installing $(JS_TOOLS)/package-lock.json with npm ci"
	@cd $(JS_TOOLS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: plugins
plugins: toolchain
	$(CARGO) run --quiet --locked -p refill-plugin-builder

.PHONY: build
build:
	$(CARGO) build --locked -p refill

# Start PostgreSQL and MariaDB when they are installed here but not
# answering.
.PHONY: services
services:
	@if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
		echo "services: starting PostgreSQL"; \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
	fi
	@if [ -x /usr/sbin/mariadbd ] && ! mysqladmin --protocol=tcp -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; then \
		echo "services: starting MariaDB"; \
		start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; \
		for i in $$(seq 1 30); do \
			mysqladmin --protocol=tcp -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1 && break; sleep 1; \
		done; \
	fi

.PHONY: demo
demo: plugins build
	@rm -rf demo/demo.db demo/demo.db-* demo/.refill
	python3 demo/seed.py demo/demo.db
	@sed "s/@REMAP_SHA256@/$$(awk '$$2 == "remap.wasm" { print $$1 }' plugins/dist/SHA256SUMS)/" demo/quotes.toml.in > demo/quotes.toml
	@echo; echo "### refill plan demo/quotes.toml"
	$(REFILL_DEBUG) plan demo/quotes.toml
	@echo; echo "### refill run demo/quotes.toml   (a dry run: nothing is written)"
	$(REFILL_DEBUG) run demo/quotes.toml
	@echo; echo "### refill run demo/quotes.toml --execute"
	$(REFILL_DEBUG) run demo/quotes.toml --execute
	@echo; echo "### refill status --spec demo/quotes.toml"
	$(REFILL_DEBUG) status --spec demo/quotes.toml
	@echo; echo "### refill verify demo/quotes.toml   (recompute the run and compare; writes nothing)"
	$(REFILL_DEBUG) verify demo/quotes.toml

.PHONY: test
test: plugins services
	$(CARGO) test --locked --workspace

.PHONY: lint
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

# pgbench ships with the PostgreSQL server; its wrapper and psql with the
# client packages.
.PHONY: bench
bench: plugins services
	@command -v pgbench >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql-client postgresql-contrib; }
	$(CARGO) bench --locked -p refill --bench backfill
	$(CARGO) bench --locked -p refill --bench mariadb

# The speed tables at 10,000,000 rows, one round of each workload (long:
# ten times `make bench`'s speed table; a template and its copy take a few
# GB of disk on each server).
.PHONY: bench-large
bench-large: plugins services
	REFILL_BENCH_ROWS=10000000 REFILL_BENCH_ROUNDS=1 REFILL_BENCH_ONLY=speed $(CARGO) bench --locked -p refill --bench backfill
	REFILL_BENCH_ROWS=10000000 REFILL_BENCH_ROUNDS=1 $(CARGO) bench --locked -p refill --bench mariadb
