# workbench: two commands on a fresh machine.
#   make report  -> set up .venv and run the main job (the default report on the demo zoo)
#   make test    -> set up .venv and run the whole test suite (what .ci/run calls)
PY      ?= python3
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.workbench-installed
# One intra-op thread: on small shared machines it is often many times faster than two.
export WORKBENCH_THREADS ?= 1
# Developers' caches (the demo zoo, the benchmarks' references) stay in the checkout, where `make clean` finds
# them; an installed workbench uses the user's cache directory (platformdirs) unless WORKBENCH_CACHE says otherwise.
export WORKBENCH_CACHE ?= $(CURDIR)/data/cache
export PYTHONUNBUFFERED := 1

.PHONY: setup report test lint format lab zoo benchmarks clean browser peers

setup: $(STAMP)

# torch is installed pinned *first*: an open range would pull the newest CUDA build (gigabytes).
$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(PYTHON) -m ipykernel install --sys-prefix --name workbench --display-name "Python (workbench)" >/dev/null
	touch $(STAMP)

report: setup
	$(PYTHON) -m workbench.main

# Browser tests need Debian's chromium: installed here when missing and running as root, else a clear stop.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the browser tests (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "The browser tests need Debian's chromium: run 'sudo apt-get install chromium chromium-driver', then make test" >&2; \
	    exit 1; \
	  fi; }

# ruff (lint + format check) first: seconds, and a finding stops the run before the slow tests
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The peer packages (the `bench` extra, pinned) go in with --no-deps: the tests compare against netcal and
# weightwatcher side by side, as the benchmarks do, and their own requirements would replace the pinned torch.
PEERS := $(VENV)/.workbench-peers
peers: $(PEERS)
$(PEERS): $(STAMP)
	$(PYTHON) -m pip install -q --disable-pip-version-check --no-deps $$($(PYTHON) benchmarks/_common.py --bench-requirements)
	touch $(PEERS)

test: setup peers browser lint
	$(PYTHON) -m pytest

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

zoo: setup
	$(PYTHON) -m workbench.zoo

# The peers the benchmarks compare against (the `bench` extra) go in with --no-deps: their own requirements
# would replace the pinned torch. benchmarks/_common.py is the scripts' shared helper, not a benchmark.
benchmarks: setup peers
	for f in benchmarks/[!_]*.py; do $(PYTHON) $$f || exit 1; done

clean:
	rm -rf $(VENV) data/cache reports dist
