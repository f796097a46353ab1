# make demo: set up .venv and train on scikit-learn's digits (no network needed).
# make test: set up .venv and run every test (CPU; GPU tests skip without CUDA), one worker per core.
# make test-fast: the unit tests not marked slow (over 30 s each): the edit loop, under 3 minutes.
VENV ?= .venv
PYTHON ?= python3
# torch/torchvision for the venv; override for another CUDA/CPU build, e.g. TORCH_PIP="torch torchvision".
TORCH_PIP ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# pytest-xdist workers; a test file runs whole on one worker, so its module fixtures are built once,
# and files are handed out in tests/conftest.py's order (longest first), not by their test counts.
WORKERS ?= auto
PYTEST := $(VENV)/bin/python -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder -ra

.PHONY: setup test test-fast test-unit coverage demo accuracy clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH_PIP)
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: setup
	$(PYTEST) --durations=15 tests $(PYTEST_ARGS)

test-fast: setup
	$(PYTEST) -m "not slow and not integration" tests $(PYTEST_ARGS)

test-unit: setup
	$(PYTEST) -q tests/unit $(PYTEST_ARGS)

# Line and branch coverage of trainer/, the training subprocesses included (.coveragerc).
coverage: setup
	rm -rf .coverage-data && mkdir .coverage-data
	COVERAGE_FILE=$(CURDIR)/.coverage-data/coverage $(PYTEST) --cov --cov-report=term tests $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/trainer demo

# The accuracy tables of README: each data set x (recipe on the cached and the PIL pipeline, recipe +
# switches, the scratch recipe) x 3 seeds, then cached vs PIL per data set (~70 min on 2 CPU cores).
accuracy: setup
	$(VENV)/bin/python launch/accuracy_table.py

clean:
	rm -rf runs/demo data/digits .pytest_cache
