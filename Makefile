# pyg_se3 — every set-up step lives here (CI runs `make test` on a clean clone).
#
#   make setup   create .venv and install everything, building pyg_se3's C++ kernels (re-runs when
#                pyproject.toml, setup.py, pyg_se3/csrc or this file changes)
#   make test    the whole test suite (warnings are errors, see pyproject.toml)
#   make demo    the main job
#   make bench   speed and memory over graph sizes, against the peers (benchmarks/results/; installs the bench extra)
#   make lint    ruff

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.setup-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
TORCH_VERSION := 2.13.0
# torch-scatter / torch-cluster ship only as source: build them against the installed torch,
# without build isolation (otherwise pip pulls a multi-GB CUDA torch into the build env). Their setup.py files
# compile one file at a time, so the two packages build side by side (one per core); pip caches the wheels.
SCATTER := torch-scatter==2.1.2
CLUSTER := torch-cluster==1.6.3
export MAX_JOBS ?= 2

.PHONY: setup test demo bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile $(wildcard pyg_se3/csrc/*.cpp pyg_se3/csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" wheel "setuptools>=77"
	$(PIP) install -q torch==$(TORCH_VERSION) ninja
	$(PIP) install -q --no-build-isolation $(SCATTER) & scatter=$$!; \
	  $(PIP) install -q --no-build-isolation $(CLUSTER); cluster=$$?; \
	  wait $$scatter && test $$cluster -eq 0
	$(PIP) install -q --no-build-isolation -e ".[test,dev]"
	$(PY) -W error -c "import pyg_se3, pyg_se3._C, torch_cluster, torch_scatter; print('pyg_se3', pyg_se3.__version__, 'torch', __import__('torch').__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m pyg_se3.demo

# The peers of the benchmark (the `bench` extra of pyproject.toml); re-installed whenever setup re-runs.
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q --no-build-isolation -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/bench.py

LINT_DIRS := pyg_se3 tests $(wildcard examples benchmarks datasets)

lint: $(STAMP)
	$(PY) -m ruff check $(LINT_DIRS)
	$(PY) -m ruff format --check $(LINT_DIRS)

format: $(STAMP)
	$(PY) -m ruff format $(LINT_DIRS)
	$(PY) -m ruff check --fix $(LINT_DIRS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache pyg_se3/*.so
