# Two entry points: `make run` (main job on the embedded synthetic world) and `make test`.
# Each creates .venv with Python 3.11 when missing and installs the package into it.
PYTHON ?= python3.11
VENV ?= .venv
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: run test test-real lint report docs docs-real dag clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES) --resources gpu=1
	@$(BIN)/python -c "import json; t = json.load(open('results/benchmarks/stage_times.json')); \
	print(f\"stage times: {t['total_seconds'] / 60:.1f} minutes in all on {t['machine']['cpu']} \
	({t['machine']['cores']} cores, {t['machine'].get('precision', 'float32')}); per rule: results/report/stage_times.html\")"

test: $(BIN)/.installed
	tests/system_packages.sh
	$(BIN)/python -m pytest -m "not real_weights"

# Tests with the real weights (fetched once per machine): the real configurations' DAGs on tiny settings, the judges.
test-real: $(BIN)/.installed
	$(BIN)/python -m pytest -m real_weights

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/snakemake --lint

report: $(BIN)/.installed
	$(BIN)/snakemake --report results/report.html

dag:
	$(BIN)/snakemake --rulegraph | dot -Tsvg > docs/dag.svg

clean:
	rm -rf results logs .snakemake

# docs/results.md and the README's headline table from the finished run's own JSON (copied into docs/run/)
docs: $(BIN)/.installed
	$(BIN)/python -m vhuman.results_doc results

# docs/results_real.md and the README's real-face table from a finished real-face run (copied into docs/run_real/)
docs-real: $(BIN)/.installed
	$(BIN)/python -m vhuman.results_real results
