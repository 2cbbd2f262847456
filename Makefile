# Quick start: `make demo` then `make test`. Each target creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when the package metadata or the pins change.
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt keeps torch on the local 2.13.0 CPU build (an unpinned torch pulls CUDA).
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,tflite]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgekd demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/demo_speedup.py

clean:
	rm -rf $(VENV) export/demo
