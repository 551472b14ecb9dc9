# The two set-up commands of the README:
#   make demo   installs what it needs, then runs the whole loop on the built-in task
#   make test   installs what it needs, then runs the linter and the test suite
# Everything goes into a virtual environment in the repository (.venv).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# A local CPU wheel on this kind of machine; any other torch requirement resolved
# first would pull gigabytes of CUDA packages. Users with GPUs install their own build.
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/alignloop demo --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
