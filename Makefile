# Two commands from a clean clone: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
XCHG := $(BIN)/xchg
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PG_BIN := /usr/lib/postgresql/15/bin

.PHONY: demo test setup python postgres-binaries services lint down clean-data

# -- setup: installs only what is missing ---------------------------------------------------------
setup: python postgres-binaries
	@$(XCHG) infra install

python: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11+"; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@echo "installing Python packages into $(VENV) ..."
	@$(BIN)/pip install --quiet --upgrade pip >/dev/null
	@$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

postgres-binaries:
	@if [ ! -x $(PG_BIN)/postgres ]; then \
	  command -v apt-get >/dev/null || { echo "error: PostgreSQL 15 not found in $(PG_BIN) and no apt-get: install PostgreSQL 15 or set EXCHANGE_PG_BIN_DIR"; exit 1; }; \
	  echo "installing PostgreSQL 15 with apt-get ..."; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql-15 postgresql-contrib >/dev/null; \
	fi

# -- the two quickstart commands -------------------------------------------------------------------
services: setup
	@$(XCHG) infra up
	@$(XCHG) topics apply
	@$(XCHG) db migrate

demo: services
	@$(XCHG) demo

test: setup
	@$(BIN)/ruff check streams connectors tests
	@$(BIN)/mypy
	@$(BIN)/pytest -q -ra

# -- everything else -------------------------------------------------------------------------------
lint: python
	$(BIN)/ruff check streams connectors tests
	$(BIN)/mypy

down:
	@$(XCHG) infra down

clean-data: down
	@$(XCHG) infra reset --yes
