# The two commands a fresh clone needs: `make run` and `make test`.
# Every target creates .venv from the pinned requirements.txt when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := data/synthetic
HELD_OUT := data/synthetic-test
REAL := data/real
RUN := runs/cpu
CASES ?= 32
# Training time of make run: the cpu preset's time limit, or TRAIN_MINUTES (make run
# TRAIN_MINUTES=30).
TRAIN_MINUTES ?=

.PHONY: run test lint bench assets lab student grade chromium clean
STUDENT_DIR ?= student
SUBMISSIONS ?= submissions
# Notebooks make grade runs at once; empty: instructor.py's default.
JOBS ?=

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	# nbgrader is used as a library (make student, make grade): keep its JupyterLab and server
	# extensions out of the learners' lab.
	$(BIN)/jupyter labextension disable --level=sys_prefix @jupyter/nbgrader >/dev/null 2>&1
	for e in formgrader validate_assignment assignment_list course_list; do \
	  $(BIN)/jupyter server extension disable --sys-prefix nbgrader.server_extensions.$$e >/dev/null 2>&1; done
	touch $@

# The main job: data, training (resumed if interrupted), whole-scan prediction, metrics.
run: $(STAMP)
	$(BIN)/tumorseg synth --out $(DATA) --cases $(CASES) --seed 0
	$(BIN)/tumorseg synth --out $(HELD_OUT) --cases 8 --seed 1
	$(BIN)/tumorseg info $(DATA)
	if [ -f $(RUN)/config.json ]; then $(BIN)/tumorseg train --out $(RUN) --resume; \
	else $(BIN)/tumorseg train --data $(DATA) --out $(RUN) --preset cpu \
	  $(if $(TRAIN_MINUTES),--time-limit $(TRAIN_MINUTES)); fi
	$(BIN)/tumorseg predict --model $(RUN) --input $(HELD_OUT) --out $(RUN)/predictions --tta --overwrite
	$(BIN)/tumorseg evaluate --pred $(RUN)/predictions --truth $(HELD_OUT)
	# The real development pair (data/real: measured, never trained on), beside the ceiling.
	$(BIN)/tumorseg predict --model $(RUN) --input $(REAL)/labelled --out $(RUN)/real --tta --overwrite
	$(BIN)/tumorseg evaluate --pred $(RUN)/real --truth $(REAL)/labelled --agreement $(REAL)/labelled-algorithms

test: lint $(STAMP) chromium
	$(BIN)/python -m pytest

# ruff (pinned in requirements.txt, configured in pyproject.toml): lint and formatting.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser test drives Debian's chromium (Playwright cannot download its own here).
chromium:
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# The learner version of the course (nbgrader), and autograding: SUBMISSIONS/<learner>/*.ipynb
# -> SUBMISSIONS/grades.csv.
student: $(STAMP)
	$(BIN)/python notebooks/instructor.py student --out $(STUDENT_DIR)

grade: $(STAMP)
	$(BIN)/python notebooks/instructor.py grade $(SUBMISSIONS) $(if $(JOBS),--jobs $(JOBS))

assets: $(STAMP)
	$(BIN)/python assets/make_assets.py

clean:
	rm -rf build .pytest_cache
