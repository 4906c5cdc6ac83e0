# Every target sets up .venv on first use: a fresh clone needs only Python >= 3.11 and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo tools test lint typecheck unit long test-rings bench hostile soak crash-soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/chimney demo

lint: $(STAMP)
	$(BIN)/ruff check tcpchimney tests bench
	$(BIN)/ruff format --check tcpchimney tests bench

typecheck: $(STAMP)
	$(BIN)/mypy tcpchimney

unit: $(STAMP)
	$(BIN)/pytest -q

# The Linux-side programs the tests drive (ab, wrk, proxychains4), from Debian's packages when root.
tools:
	bash tools/debian-tools.sh

test: lint typecheck tools
	$(BIN)/pytest -q -ra

# Runs too long for every commit (minutes); `make test` has a bounded form of each.
long: $(STAMP)
	TCPCHIMNEY_LONG=1 $(BIN)/pytest -q -ra -m long

# The whole offload suite with the target behind the NIC process's ring transport (both ends in one
# process on the simulated link); `make test` runs a subset (tests/offload/test_ring_transport.py).
test-rings: $(STAMP)
	TCPCHIMNEY_TRANSPORT=rings $(BIN)/pytest -q -ra tests/offload

bench: $(STAMP) tools
	$(BIN)/python -m bench

# The hostile-target harness for as long as asked: HOSTILE_SECONDS of sessions (default 900) from seed
# HOSTILE_SEED (default 1000), or HOSTILE_SEEDS sessions; prints each session with a problem or a known limit,
# then a summary.
# kill -9 of the NIC process during 1 GB each way against Linux (root, a TAP): no byte lost, no RST.
crash-soak: $(STAMP)
	TCPCHIMNEY_LONG=1 TCPCHIMNEY_REQUIRE_NET=1 $(BIN)/pytest -q -ra tests/interop/test_interop_nic_crash.py

hostile: $(STAMP)
	PYTHONPATH=tests $(BIN)/python tests/offload/hostile_target.py

# The long form of tests/offload/test_soak.py: seeds in order until SOAK_SEEDS ("first-last" or a count) or
# SOAK_SECONDS (wall clock) run out; SOAK_SEED=N replays one seed verbosely; SOAK_MAX_BYTES sizes transfers.
SOAK_SEEDS ?= 1-1000000
SOAK_SECONDS ?= 600
soak: $(STAMP)
	SOAK_SEEDS=$(SOAK_SEEDS) SOAK_SECONDS=$(SOAK_SECONDS) PYTHONPATH=tests:tests/offload \
		nice $(BIN)/python tests/offload/offload_soak.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
