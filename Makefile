# Two commands: `make demo` and `make test`. Both create .venv with pip on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PyTorch is installed first and explicitly: pip then takes it from a local wheel where one exists
# (see DEVELOPERS.md) instead of resolving a CUDA build through the dependency graph.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: venv demo test clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/smallset demo

test: venv browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .prefect mlflow.db mlartifacts smallset-out

# Headless Chromium renders the report and the MLflow UI in the browser tests (Debian's package).
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install Debian's chromium package (the browser tests need it)"; exit 1; fi; }
