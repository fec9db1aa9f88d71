# make run          set up .venv and render the Ceph RGW example (no cluster needed)
# make test         set up, build the real test servers if not cached, lint, run every test
# make unit         the fast tier: no servers, no root (the daemon against an in-memory API)
# make integration  the real servers: kube-apiserver + etcd, Consul, BIND (some need root)
# make system       the image (podman) and the data path (kube-proxy, network namespaces)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the dependencies' wheels, from requirements.lock (hash-checked), for the package test's
# clean virtual environment: tests never reach the network
export SYNCD_WHEELHOUSE ?= $(HOME)/.cache/syncd/wheelhouse

.PHONY: setup run check test unit integration system lint servers system-deps clean bench bench-scale bench-dataplane bench-consul-scale bench-consul-memory soak bench-takeover bench-resources bench-faults wheelhouse

RUN_STAMP := $(VENV)/.installed-run

# -qq: errors only (setuptools' notice about editable installs is not news to anyone)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -qq -e '.[test]'
	touch $@ $(RUN_STAMP)

# syncd alone, without the test tools: what `make run` needs
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -qq -e .
	touch $@

setup: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/syncd render --config config/ceph-rgw.yaml

check: setup
	$(BIN)/syncd check --config config/ceph-rgw.yaml

system-deps:
	bash scripts/install-system-deps.sh

wheelhouse: setup
	$(BIN)/pip download --quiet --require-hashes -r requirements.lock -d $(SYNCD_WHEELHOUSE)

servers: system-deps
	bash scripts/build-test-servers.sh

lint: setup
	$(BIN)/ruff check syncd tests bench harness
	$(BIN)/ruff format --check syncd tests bench harness
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: setup
	$(BIN)/pytest tests/unit

integration: setup servers wheelhouse
	$(BIN)/pytest tests/integration tests/e2e

system: setup servers
	$(BIN)/pytest tests/image tests/dataplane

test: setup servers wheelhouse lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info

bench: setup servers
	$(BIN)/python -m bench.consul_latency

# 10,000 targets x 10 backends; about 25 minutes (a 10-minute idle phase included)
bench-scale: setup servers
	$(BIN)/python -m bench.static_scale

# 1 to 10,000 Consul services against an agent with default limits, plus one service of
# 5,000 instances; about 75 minutes (idle windows of 10 and 30 minutes included)
bench-consul-scale: setup servers
	$(BIN)/python -m bench.consul_scale

# registry event -> first client request on the new backend, through a real kube-proxy
# what one feed-followed Consul service costs, by the module that allocated it (tracemalloc,
# 2,000 services in this process); about 5 minutes
bench-consul-memory: setup servers
	$(BIN)/python -m bench.consul_memory

bench-dataplane: setup servers
	$(BIN)/python -m bench.dataplane_latency

# random Consul operations against real servers: three runs of 300 services and 6,000
# operations (about 7 minutes each); every target must equal the model afterwards, and
# staleness per kind of change is reported
soak: setup servers
	$(BIN)/python -m bench.consul_model

# the network-fault matrix through Toxiproxy: time to detect, to converge after healing,
# requests and writes during recovery (about 5 minutes a round; --repeat N for more)
bench-faults: setup servers
	$(BIN)/python -m bench.faults --repeat 3

# leader takeover after SIGKILL, 10 times: min / median / max (about 5 minutes)
bench-takeover: setup servers
	$(BIN)/python -m bench.takeover

# 1,000 ExternalServices of 10 backends: cold and converged --once, the daemon's start, one
# edit, two idle resync rounds (writes, status included; requests; CPU; RSS); about 6 minutes
bench-resources: setup servers
	$(BIN)/python -m bench.resources_scale
