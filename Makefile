# The user's interface. `make` (or `make help`) lists every target and variable.
# Every target depends on `setup`, so a fresh clone needs no other step.

.DEFAULT_GOAL := help
SHELL := /bin/bash

## Variables (name=default: meaning)
IN ?= in##             images: IN/<class>/**/<image> or IN/<split>/<class>/**/<image>
FEATURES ?= features## cache root: FEATURES/<input-id>/<key>/embeddings.npy, manifest.csv, meta.json, rejected.csv
DATASET ?=##           name of the input's folder under FEATURES (empty: IN's name and a hash of its path); `make import` writes FEATURES/DATASET/imported-<dim>/
OUT ?= out##           where stage 2 writes comparison.csv, predictions.csv, reports/, models/, figures/
BACKBONE ?= vgg16##    backbone from keras.applications (`make weights` lists them all)
BACKBONES ?=##         several backbones, comma-separated (e.g. vgg16,convnexttiny): features and compare run each
LAYER ?=##             pool this intermediate layer instead of the last block (e.g. block4_pool); part of the key
WEIGHTS ?= imagenet##  imagenet, none (random init, offline tests) or a path to a weights .h5 file
SIZE ?=##              side in pixels of the centre square the images are resized to (empty: the backbone's own, 224 for vgg16)
POOLING ?= avg##       global pooling of the last feature map: avg or max
BATCH ?= 32##          images per model call
PRECISION ?= fp32##    fp32, bf16, fp16 (Keras mixed precision; stored embeddings are float32), or auto: the fastest that agrees with fp32 on this machine
BACKEND ?= tensorflow## Keras backend of stage 1: tensorflow, jax (make setup-jax) or torch; each uses its GPU when it sees one; not part of the key
DECODERS ?= auto##     processes that decode images in stage 1 (auto: all cores but 2 when an NVIDIA GPU is present and there are >= 4 cores, else 0: threads)
ENGINE ?= local##      local (this machine) or ray (Ray Data for features, Ray's joblib backend for compare and audit; RAY_ADDRESS selects a cluster)
STRICT ?= 0##          1: `make features` exits non-zero when any file was rejected
MAX_PIXELS ?= 89478485## larger images are rejected (decompression-bomb guard)
HEADS ?= logreg,svm,mlp## heads to compare (comma-separated; also knn: weighted k-nearest neighbours, cosine)
NORMALIZE ?= none##    none, or l2: every head sees the vectors scaled to length 1 (the cache is unchanged)
SHOTS ?=##             few-shot curves: training images per class, comma-separated (e.g. 1,2,4,8,16) -> OUT/fewshot.csv
SHOT_DRAWS ?= 5##      draws of the training images per few-shot k
SEED ?= 42##           random state of heads, folds and hold-out
TEST_SIZE ?= 0.2##     hold-out fraction when IN has no split folders
# compare gets TEST_SIZE only when it is given (command line or environment): beside split folders it is refused
TEST_SIZE_ARG = $(if $(filter-out file,$(origin TEST_SIZE)),--test-size $(TEST_SIZE))
TUNE ?= auto##         search each head's settings (on a valid/ folder beside test/, else by nested inner CV); auto: up to 20,000 training images; 0: fixed settings
REPEATS ?= auto##      repeats of the cross-validation with other folds (auto: 3 up to 5,000 training images, else 1)
FOLDS ?= 5##           cross-validation folds on the training part
JOBS ?= 0##            parallel workers for stage 2 (0: every core)
GROUPS ?= none##       none, or dups: keep each near-duplicate cluster on one side of every split
DUP_THRESHOLD ?= auto## cosine similarity above which two images are near-duplicates (auto: from the data)
MEMORY_GB ?= auto##    memory budget of stage 2 in GiB (auto: a third of RAM, cgroup or process limit)
STALE ?= stop##        stop: compare and audit refuse a cache when IN has images added or removed since make features; ok: use the cache as it is
EMBEDDINGS ?=##        `make import`: .npy file of float vectors (N, D) computed elsewhere
LABELS ?=##            `make import`: CSV path,label[,split], one row per vector, in order
IMAGES ?=##            files or folders to classify with `make predict`
HEAD ?=##              head used by `make predict` (empty: the best head of the run in OUT)
PYTHON ?= python3##    interpreter used to create the virtualenv
VENV ?= .venv##        the virtualenv that setup creates

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRACT_ARGS = --in "$(IN)" --features "$(FEATURES)" --dataset "$(DATASET)" --backbone $(BACKBONE) --weights "$(WEIGHTS)" \
	$(if $(strip $(SIZE)),--size $(SIZE)) $(if $(strip $(LAYER)),--layer $(LAYER)) --pooling $(POOLING) \
	--precision $(PRECISION)
BACKBONES_ARG = $(if $(strip $(BACKBONES)),--backbones $(BACKBONES))
# report, audit and predict read the rest from OUT/run.json: they get a variable only when the user
# set it (on the command line or in the environment, not by a `?=` default above), so they can tell
# "given" (checked against the run) from "not given" (the run's own)
given = $(if $(and $(filter-out file default undefined,$(origin $(1))),$(strip $($(1)))),$(2))
RUN_ARGS = $(strip $(call given,IN,--in "$(IN)") $(call given,FEATURES,--features "$(FEATURES)") \
	$(call given,DATASET,--dataset "$(DATASET)") $(call given,BACKBONE,--backbone $(BACKBONE)) \
	$(call given,WEIGHTS,--weights "$(WEIGHTS)") $(call given,SIZE,--size $(SIZE)) \
	$(call given,LAYER,--layer $(LAYER)) $(call given,POOLING,--pooling $(POOLING)) \
	$(call given,PRECISION,--precision $(PRECISION)))
AUDIT_ARGS = $(strip $(call given,HEADS,--heads "$(HEADS)") $(call given,SEED,--seed $(SEED)) \
	$(call given,TEST_SIZE,--test-size $(TEST_SIZE)) $(call given,FOLDS,--folds $(FOLDS)))
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help setup setup-ray setup-jax gpu-wheels bench-gpu features weights import compare audit report predict demo test test-deps bench clean clean-features

help: ## list every target and variable
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1\t\2/' | expand -t 22
	@echo
	@echo "Variables (make TARGET NAME=value):"
	@grep -E '^[A-Z_]+ \?=' $(MAKEFILE_LIST) | sed -E 's/^([A-Z_]+) \?= ?([^#]*)## *(.*)/  \1=\2\t\3/' | expand -t 24
	@echo
	@echo "Every target and variable, with defaults and examples: docs/variables.md"

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

setup: $(STAMP) ## create the virtualenv and install requirements.txt (every target does this first)

RAY_STAMP := $(VENV)/.ray-installed
$(RAY_STAMP): $(STAMP) requirements-ray.txt
	$(VENV)/bin/pip install --quiet -r requirements-ray.txt
	touch $(RAY_STAMP)

setup-ray: $(RAY_STAMP) ## install the optional Ray engine (requirements-ray.txt) for ENGINE=ray

ENGINE_SETUP = $(if $(filter ray,$(ENGINE)),setup-ray)

JAX_STAMP := $(VENV)/.jax-installed
$(JAX_STAMP): $(STAMP) requirements-jax.txt
	$(VENV)/bin/pip install --quiet -r requirements-jax.txt
	touch $(JAX_STAMP)

setup-jax: $(JAX_STAMP) ## install the optional JAX backend for the CPU (requirements-jax.txt) for BACKEND=jax

BACKEND_SETUP = $(if $(filter jax,$(BACKEND)),setup-jax)

features: setup $(ENGINE_SETUP) $(BACKEND_SETUP) ## stage 1: embed new or changed images of IN into FEATURES/<input-id>/<key>/ (one pass per BACKBONES entry)
	$(PY) -m extract $(EXTRACT_ARGS) $(BACKBONES_ARG) --batch $(BATCH) --strict $(STRICT) --max-pixels $(MAX_PIXELS) \
		--engine $(ENGINE) --backend $(BACKEND) --decoders $(DECODERS)

weights: setup ## list each backbone's ImageNet weights file, whether Keras' cache has it, where to copy it
	$(PY) -m extract.weights

import: setup ## vectors computed elsewhere (EMBEDDINGS, LABELS) -> FEATURES/DATASET/imported-<dim>/
	$(PY) -m classify.importer --embeddings "$(EMBEDDINGS)" --labels "$(LABELS)" --dataset "$(DATASET)" \
		--features "$(FEATURES)"

compare: setup $(ENGINE_SETUP) ## stage 2: compare HEADS on the cached embeddings (with BACKBONES: every head on every backbone)
	$(PY) -m classify compare $(EXTRACT_ARGS) $(BACKBONES_ARG) --out "$(OUT)" --heads "$(HEADS)" --seed $(SEED) \
		$(TEST_SIZE_ARG) --folds $(FOLDS) --jobs $(JOBS) --groups $(GROUPS) \
		--dup-threshold $(DUP_THRESHOLD) --engine $(ENGINE) --repeats $(REPEATS) --memory-gb $(MEMORY_GB) \
		--tune $(TUNE) --stale $(STALE) --normalize $(NORMALIZE) --shots "$(SHOTS)" --shot-draws $(SHOT_DRAWS)

audit: setup $(ENGINE_SETUP) ## near-duplicates across splits, label suspects, leakage-aware scores -> OUT/audit/ (settings: OUT's run)
	$(PY) -m classify.audit $(RUN_ARGS) $(AUDIT_ARGS) --out "$(OUT)" --jobs $(JOBS) \
		--dup-threshold $(DUP_THRESHOLD) --engine $(ENGINE) --memory-gb $(MEMORY_GB) --stale $(STALE)

report: setup ## one self-contained HTML page of the whole experiment -> OUT/report.html (settings: OUT's run)
	$(PY) -m classify.report $(RUN_ARGS) --out "$(OUT)"

predict: setup $(BACKEND_SETUP) ## classify IMAGES with a saved head (HEAD, default the best) -> OUT/new_predictions.csv
	KERAS_BACKEND=$(BACKEND) $(PY) -m classify.predict $(RUN_ARGS) --out "$(OUT)" \
		--head "$(HEAD)" --batch $(BATCH) --max-pixels $(MAX_PIXELS) -- $(IMAGES)

bench: setup ## measure extraction, comparison and every backbone's speed -> bench/*.json, BENCHMARKS.md
	$(PY) -m bench
	$(PY) -m bench.backbones

GPU_WHEELS_PY ?= 3.10 3.11 3.12 3.13 3.14## `make gpu-wheels`: Python versions of the GPU machine to fetch optree for
gpu-wheels: setup ## download Keras and its small needs into bench/wheels/ (git-ignored, ~7 MB) for a GPU machine without them
	$(VENV)/bin/pip download --quiet --no-deps -d bench/wheels "keras==$$($(PY) -c 'import importlib.metadata as m; print(m.version("keras"))')" \
		namex absl-py rich markdown-it-py mdurl pygments tqdm filelock packaging
	for v in $(GPU_WHEELS_PY); do $(VENV)/bin/pip download --quiet --no-deps --only-binary=:all: --python-version $$v \
		--platform manylinux_2_28_x86_64 -d bench/wheels "optree==$$($(PY) -c 'import importlib.metadata as m; print(m.version("optree"))')" || exit 1; done
	@du -sh bench/wheels

bench-gpu: ## VGG16 on this machine's GPU with PyTorch and JAX, fp32 and bf16 -> bench/gpu.json, BENCHMARKS.md (see README)
	$(if $(wildcard $(PY)),$(PY),python3) -m bench.gpu

DEMO ?= demo##          where `make demo` writes its input, features and outputs
DEMO_IMAGES ?=##        empty: all 1,797 digits in the demo; a number (20 or more): only the first ones (quicker)
demo: setup ## the embedded default: scikit-learn's digits as PNGs -> features -> compare (offline-safe)
	$(PY) -m classify.demo "$(DEMO)/in" $(DEMO_IMAGES)
	$(PY) -m extract --in "$(DEMO)/in" --features "$(DEMO)/features" --size 32 --weights imagenet \
		--weights-fallback none --batch 64 --backend $(BACKEND)
	$(PY) -m classify compare --in "$(DEMO)/in" --features "$(DEMO)/features" --out "$(DEMO)/out" \
		--size 32 --weights imagenet --weights-fallback none --folds 5
	$(PY) -m classify.report --in "$(DEMO)/in" --features "$(DEMO)/features" --out "$(DEMO)/out"

test: setup setup-ray setup-jax test-deps ## run the test suite, Ray's and JAX's tests included (what CI runs)
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder tests

test-deps: ## install what the browser test needs: Debian's chromium (apt-get, as root) when missing
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium for the report's browser test (apt-get)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get update -q && apt-get install -y -q chromium; } >/dev/null \
			|| echo "warning: apt-get could not install chromium; the browser test will be skipped"; \
	else \
		echo "note: /usr/bin/chromium is missing and apt-get cannot run here (not Debian, or not root):" \
			"the browser test will be skipped; install chromium to run it"; \
	fi

clean: ## delete OUT (stage 2 outputs are re-created in seconds)
	@o="$(strip $(OUT))"; rm -rf -- "$${o:?OUT is empty}"/* "$$o"/.dups

clean-features: ## delete the whole cache under FEATURES (the CNN must run again)
	@f="$(strip $(FEATURES))"; rm -rf -- "$${f:?FEATURES is empty}"/* "$$f"/.partial "$$f"/.locks "$$f"/.tmp-* "$$f"/.old-*
