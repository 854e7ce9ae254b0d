# The two commands a fresh clone needs: `make run` and `make test`.
# Every target creates .venv from the pinned requirements.txt when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := data/synthetic
HELD_OUT := data/synthetic-test
RUN := runs/cpu
CASES ?= 32

.PHONY: run test bench assets lab student chromium clean
STUDENT_DIR ?= student

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The main job: data, training (resumed if interrupted), whole-scan prediction, metrics.
run: $(STAMP)
	$(BIN)/tumorseg synth --out $(DATA) --cases $(CASES) --seed 0
	$(BIN)/tumorseg synth --out $(HELD_OUT) --cases 8 --seed 1
	$(BIN)/tumorseg info $(DATA)
	if [ -f $(RUN)/config.json ]; then $(BIN)/tumorseg train --out $(RUN) --resume; \
	else $(BIN)/tumorseg train --data $(DATA) --out $(RUN) --preset cpu --time-limit 15; fi
	$(BIN)/tumorseg predict --model $(RUN) --input $(HELD_OUT) --out $(RUN)/predictions --tta --overwrite
	$(BIN)/tumorseg evaluate --pred $(RUN)/predictions --truth $(HELD_OUT)

test: $(STAMP) chromium
	$(BIN)/python -m pytest

# The browser test drives Debian's chromium (Playwright cannot download its own here).
chromium:
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

student: $(STAMP)
	$(BIN)/python notebooks/make_student.py --out $(STUDENT_DIR)

assets: $(STAMP)
	$(BIN)/python util.py assets

clean:
	rm -rf build .pytest_cache
