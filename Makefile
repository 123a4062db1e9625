# The two Quickstart commands. Each creates the virtualenv from requirements.txt when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/gmsrm_demo
BASE_DEMO_DIR ?= runs/demo
# Where TFDS datasets are prepared and read ("" in configs means the same TFDS default).
DATA_DIR ?= $(HOME)/tensorflow_datasets

.PHONY: demo demo-base demo-compare test setup clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# GM-SRM from one command on CPU (~9 min on 2 idle cores): prepares the embedded synthetic dataset, pre-trains
# the generative memory (stage 1), exports it, trains stage 2 with it frozen, evaluates and
# prints the table. Grids: $(DEMO_DIR)/eval/*.png; memory report: $(DEMO_DIR)/stage1/report.png.
demo: setup
	$(PY) -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/64 --data_dir=$(DATA_DIR)
	$(PY) -m gmsrm_jax.pipeline --config=configs/gmsrm.py:demo --workdir=$(DEMO_DIR) \
	    --config.data.data_dir=$(DATA_DIR)

# The same, plus the Base model (Table IV's first row) trained and evaluated with the same
# settings beside it: about 13 min (make demo plus the base row's 600 steps; not timed since
# DESIGN Q16).
demo-compare: setup
	$(PY) -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/64 --data_dir=$(DATA_DIR)
	$(PY) -m gmsrm_jax.pipeline --config=configs/gmsrm.py:demo --workdir=$(DEMO_DIR) \
	    --config.data.data_dir=$(DATA_DIR) --compare=base

# The base encoder-decoder alone (configs/base.py:demo, 2,000 steps, ~11 min on 2 idle cores); docs/QUALITY.md.
demo-base: setup
	$(PY) -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/64 --data_dir=$(DATA_DIR)
	$(PY) train.py --config=configs/base.py:demo --workdir=$(BASE_DEMO_DIR) --config.data.data_dir=$(DATA_DIR)
	$(PY) evaluate.py --workdir=$(BASE_DEMO_DIR)  # the run's own config
	@cat $(BASE_DEMO_DIR)/eval/metrics.md

# pytest-xdist: one worker per core by default (CI has 2), each test file on one worker so its
# module-scoped fixtures (compiled steps, trained runs) are built once. TEST_WORKERS=0 runs
# everything in this process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

clean-demo:
	rm -rf $(DEMO_DIR) $(BASE_DEMO_DIR)
