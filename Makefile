# pyg_se3 — every set-up step lives here (CI runs `make test` and `make docs` on a clean clone).
#
#   make setup   create .venv and install everything, building pyg_se3's C++ kernels (re-runs when
#                pyproject.toml, setup.py, pyg_se3/csrc or this file changes)
#   make test    the whole test suite (warnings are errors, see pyproject.toml)
#   make test-fast  every module's tests, cheaper (`pytest --fast`, tests/conftest.py; under a minute): 3 rotations per
#                equivariance check, fast-mode gradcheck, tests marked `slow` skipped. Not a substitute for `make test`
#   make demo    the main job
#   make bench   speed and memory over graph sizes, against the peers (benchmarks/results/; installs the bench extra)
#   make bench-nbody  how fast an N-body epoch trains, beside EGNN (benchmarks/results/nbody_speed; the bench extra)
#   make docs    the documentation (docs/ -> build/docs/html; Sphinx warnings are errors), then its doctests
#   make lint    ruff
#   make install-check  a user's install into a fresh venv with another torch (minutes; not part of `make test`)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.setup-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
# Exact versions of everything `make setup` installs (pyproject.toml declares ranges, for users' environments).
CONSTRAINTS := -c constraints.txt
# torch-scatter / torch-cluster ship only as source: build them against the installed torch,
# without build isolation (otherwise pip pulls a multi-GB CUDA torch into the build env). Their setup.py files
# compile one file at a time, so the two packages build side by side (one per core); pip caches the wheels.
export MAX_JOBS ?= 2

.PHONY: setup test test-fast demo bench bench-nbody docs lint format clean install-check

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt setup.py Makefile $(wildcard pyg_se3/csrc/*.cpp pyg_se3/csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" wheel "setuptools>=77"
	$(PIP) install -q $(CONSTRAINTS) torch ninja
	$(PIP) install -q --no-build-isolation $(CONSTRAINTS) torch-scatter & scatter=$$!; \
	  $(PIP) install -q --no-build-isolation $(CONSTRAINTS) torch-cluster; cluster=$$?; \
	  wait $$scatter && test $$cluster -eq 0
	PYG_SE3_NATIVE=1 $(PIP) install -q --no-build-isolation $(CONSTRAINTS) -e ".[cluster,scatter,test,dev,docs]"
	$(PY) -W error -c "import pyg_se3, pyg_se3._C, torch_cluster, torch_scatter; print('pyg_se3', pyg_se3.__version__, 'torch', __import__('torch').__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest --fast -q

demo: $(STAMP)
	$(PY) -m pyg_se3.runtime.demo

# The peers of the benchmark (the `bench` extra of pyproject.toml); re-installed whenever setup re-runs.
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q --no-build-isolation -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/bench.py

# How fast an N-body epoch trains, and EGNN (egnn-pytorch) on the same systems (benchmarks/results/nbody_speed).
bench-nbody: $(BENCH_STAMP)
	$(PY) benchmarks/nbody_speed.py --root data

# The Sphinx site of docs/ (sources in Markdown and reST, the API from the docstrings): the HTML with every warning an
# error, then every example as a doctest (`>>>` blocks of the docstrings autodoc pulls in, {doctest} blocks of the
# pages). Needs no network: no intersphinx, MathJax is loaded by the reader's browser.
DOCS_BUILD := build/docs
SPHINX := $(PY) -m sphinx -W --keep-going -q

docs: $(STAMP)
	$(SPHINX) -b html -d $(DOCS_BUILD)/doctrees docs $(DOCS_BUILD)/html
	$(SPHINX) -b doctest -d $(DOCS_BUILD)/doctrees docs $(DOCS_BUILD)/doctest
	@echo "docs: $(DOCS_BUILD)/html/index.html"

LINT_DIRS := pyg_se3 tests $(wildcard examples benchmarks datasets docs)

lint: $(STAMP)
	$(PY) -m ruff check $(LINT_DIRS)
	$(PY) -m ruff format --check $(LINT_DIRS)

format: $(STAMP)
	$(PY) -m ruff format $(LINT_DIRS)
	$(PY) -m ruff check --fix $(LINT_DIRS)

# A user's install, end to end: a fresh venv under build/ with a torch other than the one `make setup` pins,
# then a plain (isolated) `pip install` of this tree, which builds pyg_se3 without its C++ kernels (no torch in
# the isolated build environment). Then a silent `-W error` import and a subset of the tests that needs neither
# torch-cluster nor the kernels, run against the installed package (not the source tree: pytest's console script
# does not put the current directory on sys.path). Then the fallback of a non-isolated build that cannot compile
# (CC/CXX=false). Not part of `make test`: torch and its dependencies take minutes to install.
CHECK_VENV := build/install-check
CHECK_TORCH ?= 2.14.1
CHECK_TESTS ?= tests/test_fiber.py tests/test_basis.py tests/test_layers.py tests/test_install.py
CHECK_PY := $(CHECK_VENV)/bin/python
CHECK_IMPORT := import pyg_se3, pyg_se3.nn.kernel as k, torch; \
  print('pyg_se3', pyg_se3.__version__, 'torch', torch.__version__, 'from', pyg_se3.__file__); \
  print('native kernels:', k.NATIVE_KERNELS, '-', k.NATIVE_KERNELS_INFO)

install-check:
	rm -rf $(CHECK_VENV)
	$(PYTHON) -m venv $(CHECK_VENV)
	$(CHECK_PY) -m pip install -q --upgrade "pip>=24"
	$(CHECK_PY) -m pip install -q "torch==$(CHECK_TORCH)" "pytest>=8.0" "hypothesis>=6.100"
	$(CHECK_PY) -m pip install -q .
	$(CHECK_PY) -m pip list 2>/dev/null | grep -iE "^(torch|torch[-_]geometric|e3nn|numpy|pyg[-_]se3) "
	cd $(CHECK_VENV) && bin/python -W error -c "import pyg_se3, pyg_se3.nn" >stdout 2>stderr && \
	  test ! -s stdout && test ! -s stderr && echo "silent: python -W error -c 'import pyg_se3, pyg_se3.nn'"
	cd $(CHECK_VENV) && bin/python -W error -c "$(CHECK_IMPORT)"
	$(CHECK_VENV)/bin/pytest -p no:cacheprovider -q $(CHECK_TESTS) -k "not dev_environment"
	CC=false CXX=false $(CHECK_PY) -m pip install -q --no-build-isolation --no-deps --force-reinstall .
	cd $(CHECK_VENV) && bin/python -W error -c "$(CHECK_IMPORT)"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache pyg_se3/*.so
