# The two commands: `make demo` (set up everything, run the sample flow end to end) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 || command -v python3)
INSTALLED := $(VENV)/.installed

.PHONY: setup prerequisites up demo down test check docs test-deep status info package

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

# The SCD2 tests run a second time on the other Iceberg runtime the templates are held to (1.9.2;
# the first run uses the installed 1.10.2): a Spark JVM cannot change its jars, so it is a second
# pytest process, with LAKEHOUSE_ICEBERG_VERSION selecting the jar (provisioned on first use).
SCD2_TESTS := $(wildcard tests/glue_templates/test_scd2*.py) tests/glue_templates/test_maintain_table.py \
	tests/glue_templates/templates/test_raw_to_stage_scd2.py
OTHER_ICEBERG := 1.9.2

# Lint, format, types, the architecture's import rules and the docs site, before the tests
check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	PYTHONPATH=plugins:glue_templates $(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $(VENV)/site

# The docs as a site in site/ (mkdocs-material); --strict: a broken link or missing page fails
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

test: check
	$(PY) -m pytest
	LAKEHOUSE_ICEBERG_VERSION=$(OTHER_ICEBERG) $(PY) -m pytest $(SCD2_TESTS)

# The SCD2 property tests at depth: 100 examples per mode and sequence setting (200 per mode),
# each 20 independent key histories, on both Iceberg runtimes.
test-deep: setup
	SCD2_PROPERTY_EXAMPLES=100 $(PY) -m pytest tests/glue_templates/test_scd2_properties.py
	LAKEHOUSE_ICEBERG_VERSION=$(OTHER_ICEBERG) SCD2_PROPERTY_EXAMPLES=100 $(PY) -m pytest tests/glue_templates/test_scd2_properties.py
