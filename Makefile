# reasoning-embed: `make train` and `make test` install what they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines pin the CPU torch wheel; on a GPU cluster use `make install CONSTRAINTS=` (your torch build).
CONSTRAINTS ?= constraints-cpu.txt
STAMP := $(VENV)/.installed-stamp
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
ARGS ?=

.PHONY: help install train test test-fast study-tiny benchmarks clean
help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

# uv installs in seconds (pip takes minutes here); it is bootstrapped into the venv with pip and given pip's
# configured indexes (tools/pip_index_args.py). If uv cannot be had, pip does the install. PIP_ONLY=1 forces pip.
REQS := -e ".[dev]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || python3 -m venv $(VENV)
	@if [ -z "$(PIP_ONLY)" ] && $(VENV)/bin/pip install -q --disable-pip-version-check uv >/dev/null 2>&1; then \
		echo "installing with uv into $(VENV)"; \
		$(VENV)/bin/uv pip install -q --python $(PY) $$($(PY) tools/pip_index_args.py $(VENV)/bin/pip) $(REQS) \
		|| { echo "uv failed; installing with pip"; $(VENV)/bin/pip install -q --disable-pip-version-check $(REQS); }; \
	else \
		$(VENV)/bin/pip install -q --disable-pip-version-check $(REQS); \
	fi
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package (+ dev tools)

# `python -m reasoning_embed.train` alone is the paper's recipe (a real backbone and data to choose); make train is
# the offline default run. EXPERIMENT= (empty) trains the recipe itself on the offline corpus.
EXPERIMENT ?= offline_default
train: $(STAMP)  ## the offline default run (tiny backbone, stdlib corpus); extra overrides: make train ARGS="..."
	$(OFFLINE) $(PY) -m reasoning_embed.train $(if $(EXPERIMENT),experiment=$(EXPERIMENT)) $(ARGS)

test: $(STAMP)  ## the whole test suite, offline
	$(OFFLINE) WANDB_MODE=disabled $(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)  ## the suite without tests marked slow
	$(OFFLINE) WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow" $(ARGS)

STUDY ?= outputs/study-tiny/$(shell date +%Y-%m-%d_%H-%M-%S)
study-tiny: $(STAMP)  ## the whole study on the offline tiny triple (18 jobs: 3 backbones x 6 seeds, ~16 min) and its report
	-$(OFFLINE) $(PY) -m reasoning_embed.train -m experiment=tiny_pairs hydra.sweep.dir=$(STUDY) $(ARGS)
	$(OFFLINE) $(PY) -m reasoning_embed.report sweep=$(STUDY)

benchmarks: $(STAMP)  ## print the benchmark figures (minutes)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(OFFLINE) $(PY) $$b || exit 1; done

clean:  ## remove run outputs and caches (keeps .venv)
	rm -rf outputs/* multirun .pytest_cache .hypothesis && touch outputs/.gitkeep
