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

.PHONY: setup demo test test-fast docs bench server ui ui-shot gpu-wheels gpu-check clean

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

# The wheels a lent GPU machine lacks (its image has torch, no MLflow, no internet), for its Python, into
# GPU_WHEELS: carried there with the check (docs/gpu-check.md). Never torch, torchvision, triton or nvidia-*.
GPU_PYTHON ?= 3.12
GPU_WHEELS ?= .gpu-wheels
GPU_WHEELS_MAX_MIB := 60
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
	manylinux1_x86_64

gpu-wheels:
	mkdir -p $(GPU_WHEELS)
	rm -f $(GPU_WHEELS)/*.whl  # one version of each: two stop the install there
	$(PYTHON) -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: --implementation cp \
		--python-version $(GPU_PYTHON) $(addprefix --platform ,$(GPU_PLATFORMS)) -d $(GPU_WHEELS) \
		-r scripts/gpu-wheels.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	echo $(GPU_PYTHON) > $(GPU_WHEELS)/python-version
	@bytes=$$(cat $(GPU_WHEELS)/*.whl | wc -c); \
	echo "$$(ls $(GPU_WHEELS)/*.whl | wc -l) wheels for Python $(GPU_PYTHON) in $(GPU_WHEELS)/:" \
		"$$(awk "BEGIN { printf \"%.1f\", $$bytes / 1048576 }") MiB (at most $(GPU_WHEELS_MAX_MIB) MiB)"; \
	test $$bytes -le $$(( $(GPU_WHEELS_MAX_MIB) * 1048576 )) || { echo "error: over $(GPU_WHEELS_MAX_MIB) MiB"; exit 1; }

# One prepared check of the GPU paths, each step timed and bounded, whole run within 8 minutes on an H200;
# writes $(OUT)/gpu-check.md and exits non-zero if a step failed. DEVICE=cpu QUICK=1: a dry run here with tiny
# sizes (CUDA-only steps say skipped). INSTALL=auto|yes|no (the wheels), STEPS=all or e.g. 3,4, KEEP_GOING=1
# (run the steps after a failed one too). Needs no .venv: with none, python3 runs it (the GPU machine's). On the
# GPU machine, OUT is the tool's own $OUT.
DEVICE ?= cuda
QUICK ?= 0
OUT ?= gpu-report
INSTALL ?= auto
STEPS ?= all
KEEP_GOING ?= 0
CHECK_PY ?= $(if $(wildcard $(PY)),$(PY),python3)

gpu-check:
	$(CHECK_PY) scripts/gpu_check.py --device $(DEVICE) $(if $(filter 1,$(QUICK)),--quick) --out "$(OUT)" \
		--install $(INSTALL) --wheels $(GPU_WHEELS) --steps $(STEPS) $(if $(filter 1,$(KEEP_GOING)),--keep-going)

clean:
	rm -rf $(VENV) .pytest_cache
