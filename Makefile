# The two commands of the README: `make run` starts everything, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config.toml

.PHONY: run run-cluster test install lint bench clean-data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m demo.launch --config $(CONFIG)

# The same, plus a local PostgreSQL under var/pg and the gateway as 2 worker processes.
run-cluster: install
	$(PY) -m demo.launch --config $(CONFIG) --cluster

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean-data:
	rm -rf var
