# rfbench: the README's two commands are `make demo` and `make test`.
# VENV can point anywhere (CI keeps it outside the clone so reruns are fast).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.rfbench-installed
TEST_STAMP := $(VENV)/.rfbench-test-installed
DEMO_OUT ?= runs/demo
SMOKE_OUT ?= runs/smoke

.PHONY: demo test lint smoke install install-test clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

## demo: install rfbench, adversarially train a small CNN on Fashion-MNIST, print per-class clean/robust accuracy
demo: $(STAMP)
	$(BIN)/rfbench train --config configs/demo.yaml --out $(DEMO_OUT)
	$(BIN)/rfbench eval --run $(DEMO_OUT) --n-per-class 300 --out $(DEMO_OUT)/eval

## test: install the test dependencies if needed, run the test suite, then the smoke benchmark of every defense; prints the total time
test: $(TEST_STAMP)
	@start=$$(date +%s); \
	$(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests (exit 5): that is a failure" >&2; fi; \
	if [ $$status -eq 0 ]; then $(MAKE) --no-print-directory smoke VENV=$(VENV); status=$$?; fi; \
	echo "make test: $$([ $$status -eq 0 ] && echo passed || echo FAILED) in $$(( $$(date +%s) - start )) s (tests, then smoke)"; \
	exit $$status

## lint: ruff (rules in pyproject.toml) and pyright in basic mode, held to pyright-baseline.json (which may only shrink)
lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python scripts/check_types.py

## smoke: every registered defense for a few steps on Fashion-MNIST, results validated, per-defense time printed
smoke: $(STAMP)
	$(BIN)/rfbench smoke --out $(SMOKE_OUT)

clean-demo:
	rm -rf $(DEMO_OUT)
