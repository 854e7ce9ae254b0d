# The two commands a fresh clone needs: `make run` and `make test`.
# Every target creates .venv from the pinned requirements.txt when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := data/synthetic
CASES ?= 24

.PHONY: run test bench assets clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: $(STAMP)
	$(BIN)/tumorseg synth --out $(DATA) --cases $(CASES) --seed 0
	$(BIN)/tumorseg info $(DATA)

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks

assets: $(STAMP)
	$(BIN)/python -m tumorseg.figures assets

clean:
	rm -rf build .pytest_cache
