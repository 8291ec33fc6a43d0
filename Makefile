# Two entry points: `make demo` (the default training job) and `make test`.
# Both create .venv on first use and install the project into it (editable, with dev extras).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test notebooks clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train.py

test: $(STAMP)
	$(PY) -m pytest -q

notebooks: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,notebooks]'
	$(PY) -m jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs data .pytest_cache
