# The two commands a newcomer types: `make demo` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench slurm-up slurm-down clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m fashiontune demo --out demo

# Starts the one-node dev SLURM cluster where it can (root + apt); the `slurm` tests skip with the reason otherwise.
test: setup
	-bash slurm/dev-cluster/start.sh
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not slurm and not distributed" $(PYTEST_ARGS)

# Benchmarks print ratios against a peer measured in the same run (minutes each on 2 cores).
bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m pip install -q --no-deps img2dataset  # its Resizer is bench/shards.py's peer; its CLI's pins clash with ours
	$(PY) bench/shards.py
	$(PY) bench/train.py
	$(PY) bench/eval.py

slurm-up:
	bash slurm/dev-cluster/start.sh

slurm-down:
	bash slurm/dev-cluster/stop.sh

clean:
	rm -rf demo runs .pytest_cache
