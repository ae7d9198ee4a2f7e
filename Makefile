# The two set-up commands: `make demo` runs the whole loop, `make test` runs the test suite.
# Both create the virtual environment (outside the clone, reused between runs) and install first.
# Each checkout gets its own venv (named by a checksum of its path): an editable install in a
# venv shared by two clones would import whichever clone installed itself last.
PYTHON ?= python3
VENV ?= $(HOME)/.cache/segkit-venvs/$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
BIN := $(VENV)/bin
STAMP := .segkit-installed
# PyPI's Linux torch wheel brings CUDA libraries; TORCH_INDEX=https://download.pytorch.org/whl/cpu
# installs PyTorch's CPU build instead where that index is reachable.
TORCH_INDEX ?=

.PHONY: demo test lint install constraints print-venv

$(BIN)/python:
	mkdir -p $(dir $(VENV))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The benchmark (MONAI) and geo (rasterio) extras too: the tests that compare the tiler with MONAI
# and the GeoTIFF tests would skip without them.
$(STAMP): $(BIN)/python pyproject.toml requirements/constraints.txt
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --constraint requirements/constraints.txt -e ".[dev,benchmark,geo]"
	touch $(STAMP)

install: $(STAMP)

print-venv:
	@echo $(VENV)

demo: $(STAMP)
	$(BIN)/segkit demo --output segkit-demo

test: $(STAMP)
	$(BIN)/ruff check segkit tests benchmarks notebooks
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check segkit tests benchmarks notebooks
	$(BIN)/ruff format --check segkit tests benchmarks notebooks

constraints: $(STAMP)
	(echo "# Pinned versions for reproducible installs (Dockerfile, make). Regenerate: make constraints"; \
	 $(BIN)/pip freeze --exclude-editable | grep -v -iE "^(segkit|-e )"; \
	 echo "onnxruntime-gpu==1.31.1"; echo "monai==1.6.1") > requirements/constraints.txt
