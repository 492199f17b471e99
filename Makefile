# make demo: the main job. make test: the test suite (make test-fast: its fast tier). Both build .venv first (fast when nothing changed).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 5000
STORE := sqlite:///$(CURDIR)/mlflow.db
# make server BACKEND=postgres: a private PostgreSQL cluster in PGDIR on 127.0.0.1:PGPORT instead of SQLite.
BACKEND ?= sqlite
PGDIR ?= $(CURDIR)/pgdata
PGPORT ?= 5433
# make server auth=true (or AUTH=true): MLflow's basic-auth app; needs MLFLOW_AUTH_ADMIN_PASSWORD the first time.
auth ?= false
AUTH ?= $(auth)

.PHONY: setup demo test test-fast docs bench server ui ui-shot clean

setup: $(STAMP)

# Rebuilt only when requirements.txt changes. grep drops pip's noise about missing local index folders.
$(STAMP): requirements.txt
	@echo "make setup: building $(VENV) from requirements.txt: torch and torchvision (PyPI's CUDA build, about 3 GB"
	@echo "  to download the first time: minutes), mlflow, optuna, matplotlib, ... About 1.5 minutes on 2 cores when"
	@echo "  pip's cache has them. pip is quiet meanwhile; later runs skip this step until requirements.txt changes."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

# DATA=<folder holding cifar-10-batches-py> uses a local copy instead of downloading CIFAR-10.
demo: setup
	$(PY) -m pipeline demo $(if $(DATA),--data_dir "$(DATA)")

test: setup
	$(PY) -m pytest -q

# The fast tier: every test that starts no process, server or browser (tests/tiers.py decides from the source),
# two at a time. About a minute on 2 cores; `make test` runs everything, as CI does.
test-fast: setup
	$(PY) -m pytest -q -m "not slow" -n 2

# The param tables of docs/entry-points.md, made again from params.yaml's comments (a test checks they match).
docs: setup
	$(PY) -c 'from pipeline.config.reference import main; main()'

# Speed against the notebook's loops, measured side by side: one table of ratios (docs/performance.md).
bench: setup
	$(PY) -m bench

# A tracking server on this machine only (--host $(HOST)), artifacts in ./mlartifacts; point runs at it with
#   export MLFLOW_TRACKING_URI=http://$(HOST):$(PORT)
# (and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD with auth=true). See scripts/server.sh.
server: setup
	PYTHON=$(PY) HOST=$(HOST) PORT=$(PORT) BACKEND=$(BACKEND) AUTH=$(AUTH) STORE_DIR=$(CURDIR) PGDIR=$(PGDIR) \
		PGPORT=$(PGPORT) scripts/server.sh

# The UI over the embedded default store (the runs made without MLFLOW_TRACKING_URI), in a process group of its
# own that ends with make (Ctrl-C or SIGTERM): see scripts/grouped.sh.
ui: setup
	scripts/grouped.sh $(VENV)/bin/mlflow ui --host $(HOST) --port $(PORT) --backend-store-uri $(STORE)

# Refresh the README's picture of the UI: a tiny cifar compare, `mlflow ui` on it, headless Chromium on the link
# the compare printed (needs chromium: apt-get install chromium).
ui-shot: setup
	$(PY) tests/browser.py docs/img/compare-ui.png

clean:
	rm -rf $(VENV) .pytest_cache
