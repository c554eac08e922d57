# The two commands: `make run` and `make test`. Both build the virtualenv first.
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: run test test-faults bench services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/payments run

test: $(STAMP) services
	$(BIN)/mypy
	$(BIN)/pytest

# The fault scenarios at the full sizes tests/faults/README.md reports (`make test` runs them at 0.3).
test-faults: $(STAMP) services
	PAYMENTS_FAULTS_SCALE=1 $(BIN)/pytest tests/faults

bench: $(STAMP) services
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/payments.py

services:
	@bash tests/ensure-services.sh

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
