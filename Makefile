# The whole project runs from here. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
T ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@./infra/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev tools

run: install ## serve every function on MEDIA_PORT (default 8080), embedded PostgreSQL unless MEDIA_DATABASE_URL
	$(PY) -m localdev

migrate: install ## apply the SQL migrations (to MEDIA_DATABASE_URL, or the embedded database)
	$(PY) -m localdev migrate

migrate-store: install ## copy every referenced blob between the stores while serving (FROM=fs TO=s3; DRY_RUN=1 only compares)
	$(PY) -m common.migrate_store --from $(FROM) --to $(TO) $(if $(DRY_RUN),--dry-run)

scrub: install ## re-hash every stored blob once now, with a progress bar; exit 1 on a mismatch (RATE=MiB/s limits it)
	$(PY) -m common.scrub_command $(if $(RATE),--mib-per-second $(RATE))

token: install ## print a development bearer token (all scopes) for the running `make run`
	@$(PY) -m localdev.token $(SUB)

lint: install ## ruff and mypy (strict)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	@for f in functions/*/main.py; do $(VENV)/bin/mypy --strict --follow-imports=silent "$$f" || exit 1; done

fmt: install ## format the code
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-deps: install ## what browser tests, drills and bench need: Chromium, ChromeDriver, nginx, wrk, clamd, Uppy
	@./infra/test-deps.sh

test: install test-deps lint ## lint, then unit, integration (Testcontainers PostgreSQL), end-to-end, browser tests and fault drills; T= picks a subset
	$(PY) -m pytest $(T)

test-embedded: install ## unit and integration tests with the Docker engine hidden: the embedded-PostgreSQL fallback
	DOCKER_HOST=unix:///nonexistent/docker.sock MEDIA_TEST_REQUIRE_DOCKER= MEDIA_TEST_REQUIRE_EMBEDDED=1 \
		$(PY) -m pytest tests/unit tests/integration $(T)

up: install test-deps ## production rehearsal: each function its own process, nginx as the ingress (Ctrl-C stops)
	$(PY) -m localdev.rehearsal

redeploy: install ## in a running `make up`, redeploy one function (FUNCTION=download): new ready, switch, drain old
	@test -n "$(FUNCTION)" || { echo "usage: make redeploy FUNCTION=<one of: $(FUNCTIONS)>" >&2; exit 2; }
	$(PY) -m localdev.rehearsal redeploy $(FUNCTION)

unit: install ## unit tests only
	$(PY) -m pytest tests/unit $(T)

# `make images` builds each function's image from infra/Dockerfile: $(IMAGE_PREFIX)NAME:$(IMAGE_TAG).
IMAGE_PREFIX ?= media-
IMAGE_TAG ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BASE_IMAGE ?= python:3.11-slim-bookworm
FUNCTIONS ?= $(notdir $(patsubst %/main.py,%,$(wildcard functions/*/main.py)))

images: ## build every function's container image (needs Docker; IMAGE_PREFIX, IMAGE_TAG, BASE_IMAGE, FUNCTIONS)
	@command -v docker >/dev/null || { echo "make images needs Docker (docker: command not found)" >&2; exit 1; }
	@for name in $(FUNCTIONS); do \
	  echo "building $(IMAGE_PREFIX)$$name:$(IMAGE_TAG) from $(BASE_IMAGE)"; \
	  docker build -q -f infra/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg FUNCTION=$$name \
	    -t $(IMAGE_PREFIX)$$name:$(IMAGE_TAG) . >/dev/null || exit 1; \
	done

manifests: install ## regenerate infra/k8s and infra/openfaas from the routing table (infra/manifests.py)
	$(PY) -m infra.manifests

bench: install test-deps ## the rehearsal vs nginx and the targets table; image variants; scrub; erasure; listing (SCALE=1: and 1,000,000 records)
	$(PY) -m bench.rehearsal
	$(PY) -m bench.imaging
	$(PY) -m bench.scrub
	$(PY) -m bench.erasure
	$(PY) -m bench.listing
	$(if $(SCALE),$(PY) -m bench.scale)

profile: install test-deps ## py-spy flame graphs of the rehearsal under load (SCENARIOS="metadata range small upload presigned", GIL=1)
	$(PY) -m bench.profile $(SCENARIOS) $(if $(GIL),--gil)

clean: ## remove the virtualenv and caches (keeps ./var, your local data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

.PHONY: help install run migrate scrub token lint fmt test-deps test test-embedded up redeploy unit images manifests bench profile clean
