# Every routine task of the course. `make test` and `make lab` install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# PyTorch is installed first, on its own line, so that a machine can ask for the build it has
# (CI asks for the wheels it keeps on disk); everyone else gets ranges, never pins.
TORCH_PACKAGES ?= "torch>=2.3" "torchvision>=0.18"
D2L_PACKAGE ?= d2l==1.0.3
WORKERS ?= 2
NOTEBOOKS := $(wildcard chapter_*/*.ipynb)
# `make test-floor`: a second environment at the lowest versions that pyproject.toml declares
# (about 2.7 GB of wheels: torch 2.3.1 is a CUDA 12.1 build), with whatever Python $(PYTHON) is.
# Pillow 9.3 is the first release with wheels for Python 3.11 (9.1, the declared floor, has them
# for 3.10). make clean removes it; it is rebuilt when pyproject.toml changes.
FLOOR_VENV ?= build/venv-floor
FLOOR_PACKAGES ?= "torch==2.3.1" "torchvision==0.18.1" "numpy==1.24.0" "pandas==2.0.0" "matplotlib==3.7.0" \
	"pillow==9.3.0" "scikit-learn==1.3.0" "scipy==1.10.0" "vega_datasets==0.9.0"
# The notebooks that use APIs whose behaviour or existence depends on the version.
FLOOR_NOTEBOOKS ?= chapter_multilayer-perceptrons/read-write.ipynb \
	chapter_optimization/sgd.ipynb \
	chapter_optimization/distributed-data-parallel.ipynb \
	chapter_attention-mechanisms/attention-scoring-functions.ipynb \
	chapter_computer-vision/image-augmentation.ipynb \
	chapter_computer-vision/object-detection-dataset.ipynb \
	chapter_computer-vision/rcnn.ipynb \
	chapter_computer-vision/fcn.ipynb \
	chapter_computer-vision/neural-style.ipynb \
	chapter_optimization/compilation.ipynb \
	chapter_optimization/hardware.ipynb \
	chapter_optimization/multi-device-from-scratch.ipynb \
	chapter_optimization/async-computation.ipynb \
	chapter_attention-mechanisms/bert.ipynb

# A relative mirror path would break in notebooks, whose working directory is their chapter.
ifdef COURSE_DATA_MIRROR
export COURSE_DATA_MIRROR := $(abspath $(COURSE_DATA_MIRROR))
endif

.PHONY: install lab test test-unit test-floor book bench lint headers clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_PACKAGES)
	$(PY) -m pip install -e ".[dev]"
	@# d2l is only a reference for tests and benchmarks; it hard-pins old numpy/pandas.
	$(PY) -m pip install --no-deps "$(D2L_PACKAGE)"
	touch $(STAMP)

lab: install
	$(VENV)/bin/jupyter lab

# Unit tests of common/, notebook hygiene, and every notebook through nbval in smoke mode.
# One thread per kernel: the WORKERS kernels share the machine's cores.
# `.` collects tests/ and the chapters (pyproject.toml's norecursedirs skips data/, build/ and
# hidden folders), so that the README's command without make is this one.
test: install
	COURSE_SMOKE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -n $(WORKERS) --dist loadscope \
		--nbval-lax --nbval-cell-timeout=600 --nbval-sanitize-with tests/nbval_sanitize.cfg .

test-unit: install
	OMP_NUM_THREADS=1 $(PY) -m pytest tests

$(FLOOR_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install $(FLOOR_PACKAGES)
	$(FLOOR_VENV)/bin/python -m pip install -e ".[dev]" $(FLOOR_PACKAGES)
	$(FLOOR_VENV)/bin/python -m pip install --no-deps "$(D2L_PACKAGE)"
	touch $@

# The unit tests and the version-sensitive notebooks at the declared lower bounds (not in CI).
test-floor: $(FLOOR_VENV)/.installed
	COURSE_SMOKE=1 OMP_NUM_THREADS=1 $(FLOOR_VENV)/bin/python -m pytest -n $(WORKERS) --dist loadscope \
		--nbval-lax --nbval-cell-timeout=600 --nbval-sanitize-with tests/nbval_sanitize.cfg \
		tests $(FLOOR_NOTEBOOKS)

# Full mode (the real sizes; meant for a GPU machine): executed copies go to build/book/ and
# RESULTS.md is regenerated from them. One chapter: make book NOTEBOOKS="chapter_x/*.ipynb";
# notebooks already executed at this commit are skipped unless BOOK_FLAGS=--force; several seeds:
# BOOK_FLAGS="--seeds 0,1,2"; a GPU job's time on this machine, estimated from 5 timed steps of
# each training loop instead of run: BOOK_FLAGS="--estimate 5".
# Only notebooks named on the command line are passed on: common.book picks its own default
# (every notebook; with --estimate, those whose full mode needs a GPU).
BOOK_NOTEBOOKS = $(if $(filter command line,$(origin NOTEBOOKS)),$(NOTEBOOKS))
book: install
	$(PY) -m common.book $(BOOK_FLAGS) $(BOOK_NOTEBOOKS)

bench: install
	$(PY) -m common.bench

lint: install
	$(VENV)/bin/ruff check common tests $(NOTEBOOKS)

# Regenerate the title badge and setup cell of every notebook from common/notebook.py.
headers: install
	$(PY) -m common.notebook headers

clean:
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
