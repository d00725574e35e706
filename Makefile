# Developer entry points; every target uses the project virtualenv in .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Stamp so that an installed venv makes `make test` start at once; pyproject changes reinstall.
INSTALLED := $(VENV)/.installed

.PHONY: .venv install demo lint test test-reliability bench bench-scale

.venv install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[test]'
	touch $@

demo: $(INSTALLED)
	$(BIN)/wfe demo

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict engine temporal_workflows activities wfe_demo
	$(BIN)/lint-imports

# lint is a prerequisite, so it finishes before pytest starts even under make -j.
# Needs nothing set: the tests find the local PostgreSQL (or Docker, or WFE_TEST_POSTGRES_URL)
# and ensure-chromium gets the browser as .ci/run does (or says in one line why not).
test: $(INSTALLED) lint
	.ci/ensure-chromium
	$(BIN)/pytest -q -m 'not reliability'

test-reliability: $(INSTALLED)
	.ci/ensure-faketime
	$(BIN)/pytest -q -m reliability

bench: $(INSTALLED)
	$(BIN)/python -m bench

# Opt-in, not part of bench: 1,000 concurrent runs and 10M annotation rows; takes long.
bench-scale: $(INSTALLED)
	$(BIN)/python -m bench.scale
