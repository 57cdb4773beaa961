# Each target sets itself up: a virtual environment in .venv with the package installed
# editable, with its dev extras. PYTHON picks the interpreter that builds the venv; EXTRAS the
# extras (EXTRAS=dev,gpt2 adds what loading GPT-2 weights and its equivalence test need).
PYTHON ?= python3
EXTRAS ?= dev
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test test-browser export exercises lint execute data train gpu-check clean FORCE

$(STAMP): pyproject.toml $(if $(filter-out $(shell cat $(STAMP) 2>/dev/null),$(EXTRAS)),FORCE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	echo "$(EXTRAS)" > $(STAMP)

lab: $(STAMP) data
	$(VENV)/bin/jupyter lab notebooks/01_big_picture.ipynb

## The whole suite: unit tests, the package/exercise/lint checks, every notebook run with nbval.
test: $(STAMP) data
	$(PY) -m pytest

## Every lesson with a widget in JupyterLab in Chromium: Run All, then each control moved through the page
## (tests/browser). Needs the system Chromium (apt-get install -y chromium fonts-dejavu-core); installs
## Playwright (the browser extra) if missing. One lesson: make test-browser ARGS="-k 10_causal_mask".
test-browser: $(STAMP) data
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -e ".[$(EXTRAS),browser]"
	$(PY) -m pytest tests/browser -m browser -rs $(ARGS)

## Get Tiny Shakespeare into the cache (or check the copy MINILLM_DATA points at); tests never download.
data: $(STAMP)
	$(PY) -m minillm data

## Regenerate minillm/<module>.py from the lessons' `#| export` cells.
export: $(STAMP)
	$(PY) tools/course.py export

## Regenerate exercises/ from solutions/ (overwrites exercises/: keep your own work in a copy).
exercises: $(STAMP)
	$(PY) tools/course.py exercises

lint: $(STAMP)
	$(PY) tools/course.py lint

## Run lesson and solution notebooks top to bottom and save their outputs, e.g. make execute NB=notebooks/01_big_picture.ipynb
NB ?= notebooks/*.ipynb solutions/*.ipynb
execute: $(STAMP) data
	$(PY) tools/course.py execute $(NB)

## Train lesson 20's GPT on Tiny Shakespeare (the preset for this machine: a few minutes on a 2-core CPU),
## then sample from it. A second `make train` resumes the run (or, if it finished, only samples).
## Options go through ARGS, e.g. make train ARGS="--max-steps 500"; RUN names the run directory.
RUN ?= runs/tinyshakespeare
train: $(STAMP) data
	$(PY) -m minillm train --out $(RUN) $(if $(wildcard $(RUN)/checkpoint.pt),--resume) $(ARGS)
	$(PY) -m minillm sample --out $(RUN) --prompt "ROMEO:" --tokens 500

## On a CUDA machine: the GPU tests, time to validation loss 1.47 and throughput (MFU) of the GPU
## preset, and lesson 20 executed there, all under runs/gpu-check-<date>, with a table at the end.
## make gpu-check ARGS=--dry-run rehearses every step at toy size on the CPU.
gpu-check: $(STAMP) data
	$(PY) benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis minillm.egg-info
