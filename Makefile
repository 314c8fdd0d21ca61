# Two commands from a clean clone: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
XCHG := $(BIN)/xchg
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PG_BIN := /usr/lib/postgresql/15/bin
WEB_VENDOR := connectors/websocket/static/vendor
CHROMIUM := /usr/bin/chromium

.PHONY: demo test setup python postgres-binaries web-vendor chromium services lint down clean-data

# -- setup: installs only what is missing ---------------------------------------------------------
setup: python postgres-binaries web-vendor
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

# The live page's browser libraries (lightweight-charts), pinned by $(WEB_VENDOR)/package-lock.json and
# served by the gateway from its static folder: no build step.
web-vendor: $(WEB_VENDOR)/node_modules/.package-lock.json

$(WEB_VENDOR)/node_modules/.package-lock.json: $(WEB_VENDOR)/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found: install Node.js 20+ with npm (Debian: apt-get install -y nodejs npm)"; exit 1; }
	@echo "installing the live page's browser libraries with npm ci ..."
	@npm ci --no-audit --no-fund --silent --prefix $(WEB_VENDOR) >/dev/null
	@touch $@

# Debian's Chromium, for the live page's browser test (driven by Playwright, which never downloads a browser).
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  command -v apt-get >/dev/null || { echo "error: $(CHROMIUM) not found and no apt-get: install Chromium"; exit 1; }; \
	  echo "installing Chromium with apt-get ..."; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	fi

# -- the two quickstart commands -------------------------------------------------------------------
services: setup
	@$(XCHG) infra up
	@$(XCHG) topics apply
	@$(XCHG) db migrate

demo: services
	@$(XCHG) demo

test: setup chromium
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
