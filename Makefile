# Set-up and common tasks. Every target installs what it needs first and is safe to run again.
PYTHON ?= python3
# CPU wheel by default, so a machine without a GPU never pulls CUDA packages; override e.g. `make demo TORCH=torch`.
TORCH ?= torch==2.13.0
PIP := $(PYTHON) -m pip
STAMPS := .make
DEMO_OUT ?= demo_output
PYTEST_ARGS ?=

.PHONY: help install install-test install-doc demo test test-all docs docs-check tutorials lint format clean

help:
	@echo "make demo      install, then pretrain/embed/cluster/benchmark on a bundled dataset -> $(DEMO_OUT)/report.md"
	@echo "make test      install test extras and run the default test suite"
	@echo "make test-all  also run slow, optional and docs tests"
	@echo "make docs      build the Sphinx site with warnings as errors"
	@echo "make docs-check build the docs, then check them in headless Chromium (needs Debian's chromium)"
	@echo "make tutorials re-execute the notebooks in tutorials/ (TUTORIALS=02_xtrimogene for one)"
	@echo "make lint      ruff check + format check"

$(STAMPS)/pip:
	@mkdir -p $(STAMPS)
	$(PIP) install --quiet --upgrade "pip>=25.1"
	@touch $@

$(STAMPS)/torch: | $(STAMPS)/pip
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH)"
	@touch $@

$(STAMPS)/install: pyproject.toml $(STAMPS)/torch
	$(PIP) install --quiet -e .
	@touch $@

$(STAMPS)/install-test: pyproject.toml $(STAMPS)/install
	$(PIP) install --quiet --group test
	@touch $@

$(STAMPS)/install-doc: pyproject.toml $(STAMPS)/install
	$(PIP) install --quiet --group doc
	@touch $@

install: $(STAMPS)/install
install-test: $(STAMPS)/install-test
install-doc: $(STAMPS)/install-doc

demo: install
	$(PYTHON) -m cellformers demo --out $(DEMO_OUT)

test: install-test
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

test-all: install-test install-doc
	$(PYTHON) -m pytest -q -m "" $(PYTEST_ARGS)

docs: install-doc
	$(PYTHON) -m sphinx -W --keep-going -b html docs docs/_build/html

docs-check: docs
	$(PYTHON) docs/check_browser.py

TUTORIALS ?=
tutorials: install-doc
	$(PYTHON) tutorials/run.py $(TUTORIALS)

lint:
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks

format:
	$(PYTHON) -m ruff check --fix src tests benchmarks
	$(PYTHON) -m ruff format src tests benchmarks

clean:
	rm -rf $(STAMPS) docs/_build $(DEMO_OUT) .pytest_cache
