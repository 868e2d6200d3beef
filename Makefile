# `make demo`: set up .venv and run the pipeline on the embedded demo cohort (no network, CPU).
# `make test`: set up .venv and run the test suite (what .ci/run calls).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup demo test test-all lint clean-demo

setup: $(VENV)/.installed

# The pipeline's own dependencies (all `make demo` needs). The venv's bundled pip installs an editable pyproject
# package; --no-compile: Python writes the .pyc of the modules a job imports, not of every installed file (about
# half the set-up's CPU time; BENCHMARKS.md, "make demo in 15 minutes").
$(VENV)/.runtime: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e .
	touch $@

# ... and the test extras (pytest and the reference libraries the tests cross-check against).
$(VENV)/.installed: $(VENV)/.runtime
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/snakemake --cores $(CORES) --configfile config.demo.yaml

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m ''

lint: $(VENV)/.runtime
	$(BIN)/snakemake --lint --configfile config.demo.yaml

clean-demo:
	rm -rf results/demo logs benchmarks/demo_data .snakemake
