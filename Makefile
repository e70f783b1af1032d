# make demo  - the main job on the built-in local setup (does its own set-up)
# make test  - every test and validator CI runs (does its own set-up)
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.collections
export PATH := $(CURDIR)/$(BIN):$(PATH)
# podman here needs runc and explicit ulimits (crun fails on this kernel's cgroups).
export CONTAINERS_CONF := $(CURDIR)/src/spot_migration/data/containers.conf

.PHONY: setup demo test pytest sanity lint changelog importer bench clean

setup:
	@bash hacking/bootstrap.sh

demo: setup
	$(BIN)/spot-migration demo

test: setup pytest sanity lint changelog importer

pytest: setup
	$(BIN)/python -m pytest -n $${PYTEST_WORKERS:-2} --dist worksteal $(PYTEST_ARGS)

sanity: setup
	bash hacking/sanity.sh

lint: setup
	$(BIN)/ansible-lint --profile production --offline

changelog: setup
	$(BIN)/antsibull-changelog lint

importer: setup
	bash hacking/importer.sh

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf .venv .venv-importer .collections build .demo tests/output
