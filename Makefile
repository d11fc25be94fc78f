# Every entry point of the project. `make demo` and `make test` set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 5000

.PHONY: setup demo test lint serve

setup: $(STAMP)

# Re-run only when a requirements file changes; the venv itself is created once.
$(STAMP): requirements.txt requirements-nodeps.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

demo: setup
	$(PY) demo.py

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

# Cog's real HTTP server in predict mode on 127.0.0.1:$(PORT). Its worker runs `python`,
# so the venv must come first on PATH.
serve: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" COG_PREDICT_TYPE_STUB=predict.py:Predictor PORT=$(PORT) \
		$(PY) -m cog.server.http --host 127.0.0.1
