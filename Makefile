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

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .prefect mlflow.db mlartifacts smallset-out
