# The two commands: `make demo` (set up everything, run the sample flow end to end) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 || command -v python3)
INSTALLED := $(VENV)/.installed

.PHONY: setup prerequisites up demo down test status info package

prerequisites:
	@deploy/prerequisites.sh

$(INSTALLED): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $@

# the AWS CDK CLI (npm, pinned by deploy/aws/package-lock.json): the CDK tests synthesise with it offline
CDK := deploy/aws/node_modules/.bin/cdk

$(CDK): deploy/aws/package.json deploy/aws/package-lock.json
	npm ci --prefix deploy/aws --no-audit --no-fund
	@touch $@

setup: prerequisites $(INSTALLED) $(CDK)
	@$(PY) -c 'from lakehouse.config import load_settings; from lakehouse.stack.jars import provision_jars; provision_jars(load_settings().jars_dir)'

# AWS artifacts into dist/ (templates + lakehouse_jobs.zip, MWAA bundle, Lambda zip), byte-reproducible
package: $(INSTALLED)
	$(PY) deploy/package.py --out dist

up: setup
	$(VENV)/bin/lakehouse up

demo: setup
	$(VENV)/bin/lakehouse demo

down:
	@if [ -x $(VENV)/bin/lakehouse ]; then $(VENV)/bin/lakehouse down; else echo "nothing to stop (no $(VENV))"; fi

status info:
	$(VENV)/bin/lakehouse $@

test: setup
	$(PY) -m pytest
