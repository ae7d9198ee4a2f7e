# The two set-up commands: `make demo` runs the whole loop, `make test` runs the test suite.
# Both create the virtual environment (outside the clone, reused between runs) and install first.
PYTHON ?= python3
VENV ?= $(HOME)/.cache/segkit-venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.segkit-installed

.PHONY: demo test lint install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/segkit demo --output segkit-demo

test: $(STAMP)
	$(BIN)/ruff check segkit tests benchmarks
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check segkit tests benchmarks
	$(BIN)/ruff format --check segkit tests benchmarks
