# Two entry points: `make demo` (the default training job) and `make test`.
# Both create .venv on first use and install the project into it (editable, with dev extras).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make test` runs the test files in parallel (pytest-xdist), one worker process per core, at
# most 4 (each holds its own JAX and compiled programs): much of the suite's time is on one
# thread (XLA compiling, Python, subprocesses starting), so 2 workers on 2 cores ran it
# 1.45x faster (BENCHMARKS.md, "The test suite"). `make test TEST_WORKERS=0`: one process.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))

.PHONY: demo test notebooks clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train.py

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

notebooks: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,notebooks]'
	$(PY) -m jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs data .pytest_cache
