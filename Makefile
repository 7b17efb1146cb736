# Two commands: `make demo` and `make test`. Both create .venv with pip on first use.
# `make test-fast` runs only the unit tests (no Prefect server, browser, Dask or extra processes);
# `make lint` runs ruff (configured in pyproject.toml), and `make test` runs it before the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PyTorch is installed first and explicitly: pip then takes it from a local wheel where one exists
# (a wheel directory in pip's own configuration) instead of resolving a CUDA build through the dependency graph.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: venv demo lint test test-fast test-server test-browser clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/smallset demo

lint: venv
	$(BIN)/ruff check .

test: venv browser lint
	$(BIN)/python -m pytest -q

# Markers (pyproject.toml): server, browser, dask, multiprocess, slow; unmarked tests are unit tests.
FAST_TESTS := not (server or browser or dask or multiprocess or slow)

test-fast: venv
	$(BIN)/python -m pytest -q -m "$(FAST_TESTS)"

test-server: venv
	$(BIN)/python -m pytest -q -m "(server or dask or multiprocess or slow) and not browser"

test-browser: venv browser
	SMALLSET_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -m browser

clean:
	rm -rf $(VENV) .prefect mlflow.db mlartifacts smallset-out

# Headless Chromium renders the report and the MLflow UI in the browser tests (Debian's package).
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install Debian's chromium package (the browser tests need it)"; exit 1; fi; }
