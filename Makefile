# Two commands do all set-up on a fresh machine with Python 3.11+ and a package index:
#   make demo   fine-tune minilm-l6 on rotten-tomatoes, evaluate, export
#   make test   ruff + the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= workdirs/demo

.PHONY: demo demo-baseline test lint clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/sft-jax assets fetch minilm-l6
	$(VENV)/bin/sft-jax assets fetch rotten-tomatoes
	$(VENV)/bin/sft-jax train --config=configs/classification.py --workdir=$(DEMO_DIR)

# The same model and splits before fine-tuning (fresh head): the starting point.
demo-baseline: $(VENV)/.base
	$(VENV)/bin/sft-jax eval --config=configs/classification.py --model=minilm-l6 \
		--workdir=$(DEMO_DIR)-before

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

# Two pytest workers (one per core); a test file runs whole on one worker (module fixtures
# are built once), the slowest files first (tests/conftest.py); the 30 slowest tests are
# listed at the end, to see where the suite's time goes.
test: lint
	$(PY) -m pytest -n 2 --dist loadfile --durations=30

clean:
	rm -rf $(VENV) workdirs .pytest_cache .ruff_cache
