# Two commands (see README, Quick start):
#   make demo   set everything up, then replay a shipped trace through every policy
#   make test   set everything up, then lint and run the test suite
PY := .venv/bin/python
DEMO_TRACE ?= traces/smollm2-pydoc.npz

.PHONY: setup demo test lint format bench
setup:
	@./scripts/setup.sh
	@# The app's Policy race on the shipped traces, replayed once into .cache/app-race/ so a
	@# cold page opens at once; redone only when the traces or the library's code change.
	@$(PY) app/h2oapp/precompute.py --if-stale

demo: setup
	$(PY) -m h2osim.replay $(DEMO_TRACE) --policy all --budget 0.2

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
