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

.PHONY: install demo test lint clean bench

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
	bash scripts/test-services.sh
	$(PY) -m pytest

# make bench: alignloop side by side with TRL (benchmarks/run.py, not a test: CI does
# not run it). Each peer gets its own environment, torch first; results in bench/.
define peer_env
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet "$(TORCH)"
	$(1)/bin/python -m pip install --quiet "trl==$(2)" pyinstrument
	touch $(1)/.installed-stamp
endef

benchmarks/.venv-trl116/.installed-stamp:
	$(call peer_env,benchmarks/.venv-trl116,1.16.*)

benchmarks/.venv-trl112/.installed-stamp:
	$(call peer_env,benchmarks/.venv-trl112,1.12.*)

$(VENV)/.bench-stamp: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-stamp benchmarks/.venv-trl116/.installed-stamp benchmarks/.venv-trl112/.installed-stamp
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
