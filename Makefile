# The README's two commands: `make demo` and `make test`.
# Each creates .venv (if missing), installs the CPU build of torch 2.13.0 first
# (an unpinned torch would pull a multi-GB CUDA build), then this package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup setup-test demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,plots]"
	touch $@

# The tests' own stamp: llama-cpp-python (the served teacher's server) is built from source, 10-30 minutes
# on two cores, so `make demo` never pays for it. GGML_NATIVE=OFF: the native build segfaulted here.
$(VENV)/.installed-served: $(VENV)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -q -e ".[test,plots,served]"
	touch $@

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-served

demo: setup
	$(PY) examples/quickstart.py

test: setup-test
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests

test-fast: setup-test
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests -m "not slow and not distributed"

clean:
	rm -rf $(VENV) outputs runs
