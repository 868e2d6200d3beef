# `make demo`: set up .venv and run the pipeline on the embedded demo cohort (no network, CPU).
# `make test`: set up .venv and run the test suite (what .ci/run calls).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup demo test test-all lint clean-demo

setup: $(VENV)/.installed

# The pipeline's own dependencies (all `make demo` needs; the venv's bundled pip installs an editable pyproject
# package). The venv must hold .pyc files: where PYTHONDONTWRITEBYTECODE is set (as on our CI machine) a venv
# without them compiles torch and scikit-learn from source in every job (BENCHMARKS.md, "make demo in 15
# minutes": ~12 CPU-s per fine-tuning job). pip compiles on one core; compileall on all of them (-j 0) does the
# same work in about half the wall time on 2 cores. Like pip, it skips files that do not compile under this Python
# (torch ships a Python 3.12-only test helper), hence `|| true`; compileall writes .pyc files whatever
# PYTHONDONTWRITEBYTECODE says.
$(VENV)/.runtime: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e .
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

# ... and the test extras (pytest and the reference libraries the tests cross-check against).
$(VENV)/.installed: $(VENV)/.runtime
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
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
