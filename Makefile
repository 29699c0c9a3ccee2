# Two commands do everything: `make demo` (the main job) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The offline copy of Fashion-MNIST beside the checkout (else: --data-dir, ~/.cache/jepa-lab,
# Debian's dataset-fashion-mnist under /usr/share/datasets, or a download).
ifneq ($(wildcard ../shared/data/fashion-mnist),)
export JEPA_LAB_DATA ?= $(abspath ../shared/data)
endif

.PHONY: setup demo test lint validate bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: the default study on Fashion-MNIST (offline), local SQLite MLflow + Optuna stores.
demo: setup
	$(VENV)/bin/jepa-lab run studies/ema_vs_sigreg.yaml

lint: setup
	$(VENV)/bin/ruff check jepa_lab tests bench
	$(VENV)/bin/ruff format --check jepa_lab tests bench
	$(VENV)/bin/mypy jepa_lab
	$(VENV)/bin/lint-imports

validate: setup
	$(VENV)/bin/jepa-lab validate studies/*.yaml

test: lint
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/throughput.py --json bench/results/cpu.json

# The documentation site (mkdocs.yml): docs/ plus the API and spec references, into site/.
docs: setup
	$(PY) -m pip install --quiet -e '.[docs]'
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache site
