# Set-up and everyday commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv

.PHONY: demo test lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet uv==0.13.8
	$(UV) pip install --quiet --python $(VENV)/bin/python -e '.[test]'
	touch $@

# Run the whole chain on the embedded demo: synthetic AOI, local store, LocalCluster, ephemeral Prefect.
demo: $(VENV)/.installed
	$(VENV)/bin/lcms synthetic-reference examples/demo.yaml --fraction 0.6
	$(VENV)/bin/lcms run examples/demo.yaml

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) lcms-runs .pytest_cache .ruff_cache
