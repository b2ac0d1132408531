# The two commands of the README. Each creates/refreshes its own virtual environment.
#   make quickstart   train recipes/quickstart.yaml on the embedded dataset (offline, ~1 min)
#   make test         the test suite: fast tier + one real end-to-end run of every subcommand
# Also: make test-all (adds the slow end-to-end runs on real data), make completions.

SHELL := /bin/bash
PY_RUN := .venv/bin/python
PY_TEST := .venv-test/bin/python

.PHONY: quickstart test test-all completions

quickstart:
	./scripts/venv.sh .venv
	.venv/bin/cft train recipes/quickstart.yaml --overwrite

test:
	./scripts/venv.sh .venv-test test
	$(PY_TEST) -m pytest -m "not slow"

test-all:
	./scripts/venv.sh .venv-test test
	$(PY_TEST) -m pytest

completions:
	./scripts/venv.sh .venv-test test
	$(PY_TEST) -m cft.completions --write completions
