# The two commands a newcomer types: `make demo` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench fmnist slurm-up slurm-down multinode-up multinode-down clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m fashiontune demo --out demo

# Starts the one-node dev SLURM cluster (and the simulated 3-node one for the `multinode` tests) and installs the real Fashion-MNIST where it can (root + apt); the `slurm`
# and real-data tests skip with the reason otherwise (under CI=true as root they fail instead).
# Debian's chromium drives the serve page's browser test (playwright cannot download its own browser here).
test: setup
	-bash slurm/dev-cluster/start.sh
	-bash slurm/dev-cluster/start.sh --nodes 3
	-$(MAKE) --no-print-directory fmnist
	-test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && apt-get install -y -q chromium; }
	@df -h "$${TMPDIR:-/tmp}" | tail -1 | awk '{print "free disk for the tests: " $$4 " (peak use ~3 GB)"}'
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not slurm and not multinode and not distributed" $(PYTEST_ARGS)

# Benchmarks print ratios against a peer measured in the same run (minutes each on 2 cores).
bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m pip install -q --no-deps img2dataset  # its Resizer is bench/shards.py's peer; its CLI's pins clash with ours
	$(PY) bench/shards.py
	$(PY) bench/train.py
	$(PY) bench/eval.py
	$(PY) bench/serve.py
	$(PY) bench/contrastive.py
	@if [ -d /usr/share/datasets/fashion-mnist ]; then $(PY) bench/fmnist.py; else echo "bench/fmnist.py skipped: make fmnist (root) installs the dataset"; fi

# Debian's dataset-fashion-mnist (~30 MB): /usr/share/datasets/fashion-mnist/{train,t10k}-*-ubyte.gz
fmnist:
	@test -d /usr/share/datasets/fashion-mnist || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; }; } \
	  || { echo "fmnist: cannot install dataset-fashion-mnist here (needs root + apt): the real-data tests skip" >&2; exit 3; }

slurm-up:
	bash slurm/dev-cluster/start.sh

slurm-down:
	bash slurm/dev-cluster/stop.sh

multinode-up:
	bash slurm/dev-cluster/start.sh --nodes 3

multinode-down:
	bash slurm/dev-cluster/stop.sh --nodes

clean:
	rm -rf demo runs .pytest_cache
