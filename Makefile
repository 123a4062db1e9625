# The two Quickstart commands. Each creates the virtualenv from requirements.txt when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
# Where TFDS datasets are prepared and read ("" in configs means the same TFDS default).
DATA_DIR ?= $(HOME)/tensorflow_datasets

.PHONY: demo test setup clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# Prepares the embedded synthetic dataset, trains the demo config on CPU (a few minutes),
# evaluates it and prints the metrics table; the PNG grids land in $(DEMO_DIR)/eval/.
demo: setup
	$(PY) -m gmsrm_jax.data.prepare --dataset=synthetic_scenes/64 --data_dir=$(DATA_DIR)
	$(PY) train.py --config=configs/base.py:demo --workdir=$(DEMO_DIR) --config.data.data_dir=$(DATA_DIR)
	$(PY) evaluate.py --config=configs/base.py:demo --workdir=$(DEMO_DIR) --config.data.data_dir=$(DATA_DIR)
	@cat $(DEMO_DIR)/eval/metrics.md

test: setup
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf $(DEMO_DIR)
