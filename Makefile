# The README's two commands: `make demo` and `make test`.
# Each creates .venv (if missing), installs the CPU build of torch 2.13.0 first
# (an unpinned torch would pull a multi-GB CUDA build), then this package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,plots]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) examples/quickstart.py

test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests

test-fast: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests -m "not slow and not distributed"

clean:
	rm -rf $(VENV) outputs runs
