# Quick start: `make demo` then `make test`. Each target creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when the package metadata or the pins change.
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean arm-board arm-board-stop

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt keeps torch on the local 2.13.0 CPU build (an unpinned torch pulls CUDA).
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,tflite,hf]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgekd demo

# Two workers, one test file each at a time (--dist loadfile keeps each file's module fixtures in one
# process): on this project's 2-core machines the suite takes ~11 minutes. Files are handed out
# in collection order, which tests/conftest.py sorts slowest first (FILE_SECONDS), not xdist's most-tests-first.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(BIN)/python benchmarks/demo_speedup.py

# An ARM64 board to test against without owning one: Debian arm64 under qemu-aarch64, served over SSH on
# 127.0.0.1 (devices/arm64-emulated.yaml). The first call builds it (~100 MB download); later calls only
# make sure its sshd runs.
arm-board: $(STAMP)
	PYTHON=$(abspath $(BIN))/python bash devices/arm64/setup.sh

arm-board-stop: $(STAMP)
	PYTHON=$(abspath $(BIN))/python bash devices/arm64/setup.sh --stop

clean:
	rm -rf $(VENV) export/demo
