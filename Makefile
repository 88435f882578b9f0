# Two entry points: `make run` (main job on the embedded synthetic world) and `make test`.
# Each creates .venv with Python 3.11 when missing and installs the package into it.
PYTHON ?= python3.11
VENV ?= .venv
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: run test lint report dag clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES) --resources gpu=1

test: $(BIN)/.installed
	tests/system_packages.sh
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/snakemake --lint

report: $(BIN)/.installed
	$(BIN)/snakemake --report results/report.html

dag:
	$(BIN)/snakemake --rulegraph | dot -Tsvg > docs/dag.svg

clean:
	rm -rf results logs .snakemake
