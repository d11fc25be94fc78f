# Every entry point of the project. `make demo` and `make test` set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 5000

.PHONY: setup browser demo test lint schema serve serve-train studio toy-base toy-flux-base fleet

setup: $(STAMP) browser

# The browser test's headless Chromium and its driver: Debian's packages, installed when missing
# and run as root (a clean CI machine); elsewhere install them with your package manager.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	  else echo "The studio's browser test needs chromium and chromedriver on PATH."; fi; \
	fi

# Re-run only when a requirements file changes; the venv itself is created once.
$(STAMP): requirements.txt requirements-nodeps.txt requirements-dev.txt requirements-fleet.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt \
		-r requirements-fleet.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	# The project on the venv's path, so `.venv/bin/python -m serving.cli` runs from any folder.
	$(PY) -c 'import pathlib, site; pathlib.Path(site.getsitepackages()[0], "sdxl-tuner.pth").write_text("$(CURDIR)\n")'
	touch $@

demo: setup
	$(PY) demo.py

# Retrain the toy base (BASE_MODEL=toy) into weights/embedded/toy_weights/ from seed 0. One torch thread:
# the tiny models run several times faster than on two threads of busy shared cores.
toy-base: setup
	OMP_NUM_THREADS=1 $(PY) -m toyworld.pretrain

# Retrain the toy FLUX.1's transformer (BASE_MODEL=toy-flux) into weights/embedded/toy_flux_weights/
# from seed 0, on the toy base's VAE.
toy-flux-base: setup
	OMP_NUM_THREADS=1 $(PY) -m toyworld.pretrain --family flux

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

# .cog/openapi_schema.json, as `cog build` would write it, and .cog/schemas/<container>.json
# for each container (the serve targets refresh the served one too).
schema: setup
	$(PY) -m serving.schema

# Cog's real HTTP server on 127.0.0.1:$(PORT). CONTAINER=flux serves the FLUX.1 container
# (default sdxl); WEIGHTS=<url or path> serves a trained version (COG_WEIGHTS);
# UPLOAD_URL=<url> PUTs output files there.
CONTAINER ?= sdxl
SERVER_ARGS = --port $(PORT) --container $(CONTAINER) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(UPLOAD_URL),--upload-url $(UPLOAD_URL))
serve: setup
	$(PY) -m serving.server --mode predict $(SERVER_ARGS)

serve-train: setup
	$(PY) -m serving.server --mode train $(SERVER_ARGS)

# The studio (docs/studio.md): a page on 127.0.0.1:$(STUDIO_PORT) that trains on your photos and
# generates with the result, over Cog servers it starts (the toy SDXL without a GPU);
# STUDIO_ARGS="--predict-url URL --train-url URL" drives servers already running.
STUDIO_PORT ?= 7860
studio: setup
	$(PY) -m studio --port $(STUDIO_PORT) --container $(CONTAINER) $(STUDIO_ARGS)

# A local Ray cluster on 127.0.0.1 serving the tiny models: Cog's routes at :$(FLEET_PORT),
# two replicas multiplexing trained weights by URL (docs/fleet.md).
FLEET_PORT ?= 8000
fleet: setup
	$(PY) -m fleet.cluster --port $(FLEET_PORT)
