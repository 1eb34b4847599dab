# The two set-up commands of the README: `make demo` and `make test`. Both install .venv from the
# committed lock first (torch 2.13.0 CPU build; see envs/lock/), then run.
PYTHON ?= python3
VENV ?= .venv
LOCK ?= envs/lock/requirements.cpu.txt
BIN := $(VENV)/bin
CORES ?= all
PYTEST_ARGS ?=

.PHONY: install demo lint test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" $(BIN)/pip install -r $(LOCK)
	$(BIN)/pip install --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/snakemake --cores $(CORES) --resources gpu=1

# Lint: the workflow (snakemake --lint, on the default and the tiny config), its formatting (snakefmt) and the
# Python outside the rules (ruff; settings in pyproject.toml).
lint: install
	$(BIN)/python -m snakemake --lint
	$(BIN)/python -m snakemake --lint --configfile .test/config/config.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules/*.smk
	$(BIN)/ruff check .

test: lint
	bash tests/setup_system.sh
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && { echo "no tests ran"; exit 1; }; exit $$rc

clean:
	rm -rf results logs benchmarks .snakemake
