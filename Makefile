# workbench: two commands on a fresh machine.
#   make report  -> set up .venv and run the main job (the default report on the demo zoo)
#   make test    -> set up .venv and run the whole test suite (what .ci/run calls)
PY      ?= python3
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.workbench-installed
# One intra-op thread: on small shared machines it is often many times faster than two.
export WORKBENCH_THREADS ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup report test lab zoo benchmarks clean

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

test: setup
	$(PYTHON) -m pytest

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

zoo: setup
	$(PYTHON) -m workbench.zoo

benchmarks: setup
	for f in benchmarks/*.py; do $(PYTHON) $$f || exit 1; done

clean:
	rm -rf $(VENV) data/cache reports
