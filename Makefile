# The two commands of the README. Each creates/refreshes its own virtual environment.
#   make quickstart   train recipes/quickstart.yaml on the embedded dataset (offline, ~1 min)
#   make test         the test suite: fast tier + one real end-to-end run of every subcommand,
#                     on two pytest-xdist workers (TEST_WORKERS=N to change; 0 runs in one process)
# Also: make test-all (adds the slow end-to-end runs on real data), make completions.

SHELL := /bin/bash
PY_RUN := .venv/bin/python
PY_TEST := .venv-test/bin/python
# most tests run the real CLI in a subprocess, one thread each: two workers keep both cores busy
TEST_WORKERS ?= 2

.PHONY: quickstart test test-all completions

quickstart:
	./scripts/venv.sh .venv
	.venv/bin/cft train recipes/quickstart.yaml --overwrite

test:
	./scripts/venv.sh .venv-test test
	$(PY_TEST) -m pytest -m "not slow" -n $(TEST_WORKERS)

test-all:
	./scripts/venv.sh .venv-test test
	$(PY_TEST) -m pytest -n $(TEST_WORKERS)

completions:
	./scripts/venv.sh .venv-test test
	$(PY_TEST) -m cft.completions --write completions
