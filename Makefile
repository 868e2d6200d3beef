# `make demo`: set up .venv and run the pipeline on the embedded demo cohort (no network, CPU).
# `make test`: set up .venv and run the test suite (what .ci/run calls).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup demo test test-all lint clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config.demo.yaml

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m ''

lint: setup
	$(BIN)/snakemake --lint --configfile config.demo.yaml

clean-demo:
	rm -rf results/demo logs benchmarks/demo_data .snakemake
