# The two commands a new user needs: `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000

.PHONY: run test lint format bench screenshot soak conformance client-conformance docs docs-serve

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Debian's venv seeds pip 23.2.1 (CVE-2023-5752) and setuptools 65.5.0 (CVE-2022-40897,
	# CVE-2024-6345): upgraded before anything is installed with them.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench,docs]'
	touch $(STAMP)

## run: serve the page and both WebSocket routes on http://127.0.0.1:$(PORT)/ with autoreload
run: $(STAMP)
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py serve --reload --port $(PORT)

## test: lint, then the whole test suite
test: $(STAMP)
	$(MAKE) lint
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## screenshot: regenerate docs/screenshot.png and docs/screenshot-phone.png from the live page
screenshot: $(STAMP)
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python -m tests.screenshot

## bench: the echo grid (docs/benchmarks.{md,png}), the room fan-out (docs/fanout.md) and permessage-deflate's costs (docs/deflate.md), their records in docs/runs/; about 50 minutes on 2 cores
bench: $(STAMP)
	$(BIN)/python -m bench.echo
	$(BIN)/python -m bench.fanout
	$(BIN)/python -m bench.deflate

## conformance: the Autobahn TestSuite (kosoku) against the project under each server and the peers; writes docs/conformance.md and docs/runs/conformance.json
conformance: $(STAMP)
	$(BIN)/python -m bench.conformance

## client-conformance: the Autobahn TestSuite's client cases (manage.py fuzzingserver) against Chromium through the page, websockets, aiohttp and picows; writes docs/client-conformance.md and docs/runs/client-conformance.json
client-conformance: $(STAMP)
	$(BIN)/python -m bench.client_conformance

## soak: ten minutes of steady echo load with churn; writes docs/soak.png and docs/runs/soak.json
soak: $(STAMP)
	$(BIN)/python -m bench.soak

## docs: the documentation site from docs/ (mkdocs-material), built strict into site/
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## docs-serve: the documentation site on http://127.0.0.1:8001/, rebuilt as pages change
docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001
