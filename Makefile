# speech_ed front door: every target is one command. `make help` lists them.
RECIPE ?= espeak_multilingual
VENV ?= .venv
SPEECH_ED = $(VENV)/bin/speech-ed
ARGS ?=
NODES ?= 1
GPUS_PER_NODE ?= 8
TIME ?= 24:00:00

.PHONY: help install recipe test test-quick test-all lint clean-exp slurm fake-librispeech efficiency

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: ## create .venv, install pinned Python packages and (as root) the corpus's Debian packages
	@VENV=$(VENV) bash scripts/install.sh

recipe: install ## run RECIPE (default espeak_multilingual) end to end; STAGE=, STOP_STAGE=, ARGS="key=value ..."
	$(SPEECH_ED) recipe $(RECIPE) $(if $(STAGE),--stage $(STAGE)) $(if $(STOP_STAGE),--stop-stage $(STOP_STAGE)) $(if $(DATA_DIR),prepare.data_dir=$(DATA_DIR)) $(ARGS)

slurm: install ## print RECIPE's SLURM training script (NODES=, GPUS_PER_NODE=, TIME=, PARTITION=, ACCOUNT=, ARGS=); SUBMIT=1 submits it
	@$(SPEECH_ED) slurm --config recipes/$(RECIPE)/config.yaml --nodes $(NODES) --gpus-per-node $(GPUS_PER_NODE) --time $(TIME) $(if $(PARTITION),--partition $(PARTITION)) $(if $(ACCOUNT),--account $(ACCOUNT)) $(if $(SUBMIT),--submit) $(ARGS)

fake-librispeech: install ## write a tiny LibriSpeech-layout corpus (espeak-ng speech) into DATA_DIR, for testing the recipe
	$(SPEECH_ED) fake-librispeech --out $(DATA_DIR)

efficiency: install ## random vs 1D vs 2D batching on a prepared RUN=, MINUTES= per strategy, MEMORY_GIB=, ARGS=; writes docs/EFFICIENCY.md
	$(SPEECH_ED) efficiency-study --recipe $(RECIPE) --run $(RUN) --minutes $(MINUTES) --memory-gib $(MEMORY_GIB) $(ARGS)

test: install ## run the test suite, slow tests included: what CI runs (.ci/run)
	WANDB_MODE=offline $(VENV)/bin/pytest

test-quick: install ## skip the tests marked slow or gpu: a developer's loop (a few minutes)
	WANDB_MODE=offline $(VENV)/bin/pytest -m 'not slow and not gpu and not bench'

test-all: install ## every test, the bench-marked ones (minutes each) included
	WANDB_MODE=offline $(VENV)/bin/pytest -m 'bench or not bench'

lint: install ## ruff check (installs ruff into the venv)
	$(VENV)/bin/pip install -q ruff==0.17.5 && $(VENV)/bin/ruff check speech_ed tests recipes scripts

clean-exp: ## delete exp/ (all runs)
	rm -rf exp
